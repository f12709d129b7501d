// The gallery's few behaviours htmx cannot do (issue 8): open the lightbox <dialog> when its body arrives,
// arrow keys for newer/older inside it, Copy prompt, and shift-click ranges of the "Select" checkboxes.
// Everything is delegated from the document, so cards added by infinite scroll or the new-image poll need
// nothing. No inline handlers: a strict Content-Security-Policy allows this file as it is.
(function () {
  "use strict";

  function lightbox() {
    return document.getElementById("lightbox");
  }

  // -- filters: folded on a phone until one is in use, so the images come first ----------------------------
  function foldFilters() {
    if (!window.matchMedia("(max-width: 40rem)").matches) return;
    document.querySelectorAll("details.more-filters[open]:not([data-filtered])").forEach(function (details) {
      details.open = false;
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", foldFilters);
  else foldFilters();

  // -- the lightbox -----------------------------------------------------------------------------------------
  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail.target;
    if (!target || target.id !== "lightbox-body") return;
    var dialog = lightbox();
    var wasOpen = !!(dialog && dialog.open);
    if (dialog && !dialog.open) dialog.showModal();
    address(wasOpen);
    var heading = target.querySelector("h2");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: true });
    }
  });

  document.addEventListener("keydown", function (event) {
    var dialog = lightbox();
    if (!dialog || !dialog.open || event.altKey || event.ctrlKey || event.metaKey) return;
    var tag = (event.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || tag === "textarea") return;
    var which = event.key === "ArrowLeft" ? "prev" : event.key === "ArrowRight" ? "next" : null;
    if (!which) return;
    var link = dialog.querySelector('[data-nav="' + which + '"]');
    if (!link) return;
    event.preventDefault();
    // Ask through htmx directly rather than clicking: a key pressed just after a swap could reach the link
    // before htmx has bound it, and the browser would follow it as a page.
    if (window.htmx) {
      window.htmx.ajax("GET", link.getAttribute("hx-get"), { target: "#lightbox-body", swap: "innerHTML" });
    } else {
      link.click();
    }
  });

  // A click on the backdrop (outside the dialog's box) closes it, as Esc does.
  document.addEventListener("click", function (event) {
    var dialog = lightbox();
    if (dialog && dialog.open && event.target === dialog) dialog.close();
  });

  function closeLightbox() {
    var dialog = lightbox();
    if (dialog && dialog.open) dialog.close();
  }
  document.body.addEventListener("image-deleted", function () {
    window.setTimeout(closeLightbox, 900);
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    var elt = event.detail.elt;
    if (elt && elt.hasAttribute && elt.hasAttribute("data-close-dialog") && event.detail.successful) {
      closeLightbox();
    }
  });

  // -- the lightbox's address: ?image=<id> while it is open ------------------------------------------------
  // Opening pushes the address (so Back closes it), Newer/Older replace it, closing goes back to the
  // address before; a page loaded with ?image=<id> opens it, and closing that one takes the parameter away.
  var STATE = "fluxwebLightbox";
  var arriving = ""; // "landed" (the page's own address) or "forward": replace the entry, do not push one
  var closingByBack = false; // the dialog closes because of Back: its close must not go back again
  var ignoreNextPop = false; // the Back our own close asked for

  function shownImage() {
    var article = document.querySelector("#lightbox-body .lb[data-image]");
    return article ? article.getAttribute("data-image") : null;
  }

  function addressWith(id) {
    var url = new URL(window.location.href);
    if (id) url.searchParams.set("image", id);
    else url.searchParams.delete("image");
    return url.pathname + url.search + url.hash;
  }

  function address(wasOpen) {
    var id = shownImage();
    if (!id || !window.history.pushState) return;
    var current = window.history.state || {};
    if (wasOpen || arriving) {
      var landed = arriving === "landed" || (wasOpen && !!current.landed);
      var state = { landed: landed };
      state[STATE] = id;
      window.history.replaceState(state, "", addressWith(id));
    } else {
      var pushed = {};
      pushed[STATE] = id;
      window.history.pushState(pushed, "", addressWith(id));
    }
    arriving = "";
  }

  function openImage(id, how) {
    var dialog = lightbox();
    if (!dialog || !window.htmx || !/^\d+$/.test(id || "")) return;
    var base = dialog.getAttribute("data-url") || "";
    var scope = dialog.getAttribute("data-scope") || "";
    arriving = how;
    window.htmx.ajax("GET", base.replace(/0$/, id) + (scope ? "?" + scope : ""), {
      target: "#lightbox-body",
      swap: "innerHTML",
    });
  }

  // `close` does not bubble: caught on the way down, for whichever #lightbox the page has now.
  document.addEventListener("close", function (event) {
    if (!event.target || event.target.id !== "lightbox") return;
    if (closingByBack) {
      closingByBack = false;
      return;
    }
    var state = window.history.state;
    if (!state || !state[STATE]) return;
    if (state.landed) {
      window.history.replaceState(null, "", addressWith(null));
    } else {
      ignoreNextPop = true;
      window.history.back();
    }
  }, true);

  // Added before htmx sets window.onpopstate, so these entries never reach htmx's history restore.
  window.addEventListener("popstate", function (event) {
    var dialog = lightbox();
    var state = event.state;
    if (ignoreNextPop) {
      ignoreNextPop = false;
      event.stopImmediatePropagation();
      return;
    }
    if (dialog && dialog.open && !(state && state[STATE])) {
      closingByBack = true;
      dialog.close();
      event.stopImmediatePropagation();
    } else if (state && state[STATE] && dialog && !dialog.open) {
      openImage(state[STATE], "forward");
      event.stopImmediatePropagation();
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var id = new URL(window.location.href).searchParams.get("image");
    if (id) window.setTimeout(function () { openImage(id, "landed"); }, 0);
  });

  // -- Copy prompt --------------------------------------------------------------------------------------------
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    var text = source.textContent.trim();
    var done = function () {
      var label = button.textContent;
      button.textContent = "Copied";
      window.setTimeout(function () { button.textContent = label; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { copyBySelection(source) && done(); });
    } else if (copyBySelection(source)) {
      done();
    }
  });

  function copyBySelection(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    selection.removeAllRanges();
    return ok;
  }

  // -- selection: shift-click ranges, the count, the zip cap ------------------------------------------------
  var SELECT = 'input[type=checkbox][name=image][form="bulk-form"]';
  var last = null;

  function boxes() {
    return Array.prototype.slice.call(document.querySelectorAll(SELECT));
  }

  function selected() {
    return boxes().filter(function (box) { return box.checked; });
  }

  function showCount() {
    var count = document.getElementById("bulk-count");
    if (!count) return;
    var n = selected().length;
    count.textContent = n ? n + " selected" : "None selected";
    var form = document.getElementById("bulk-form");
    if (form) form.classList.toggle("has-selection", n > 0);
  }

  document.addEventListener("click", function (event) {
    var box = event.target;
    if (!box.matches || !box.matches(SELECT)) return;
    if (event.shiftKey && last && last !== box && document.contains(last)) {
      var all = boxes();
      var from = all.indexOf(last);
      var to = all.indexOf(box);
      if (from > -1 && to > -1) {
        var lo = Math.min(from, to);
        var hi = Math.max(from, to);
        for (var i = lo; i <= hi; i++) all[i].checked = box.checked;
      }
    }
    last = box;
    showCount();
  });

  document.addEventListener("change", function (event) {
    if (event.target.matches && event.target.matches(SELECT)) showCount();
  });

  document.addEventListener("click", function (event) {
    var all = event.target.closest && event.target.closest("[data-select-all]");
    var none = event.target.closest && event.target.closest("[data-select-none]");
    if (!all && !none) return;
    boxes().forEach(function (box) { box.checked = !!all; });
    showCount();
  });

  // A zip over the cap is refused by the server too; saying so here keeps the page where it is.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.id !== "bulk-form") return;
    var status = document.getElementById("bulk-status");
    var n = selected().length;
    var cap = parseInt(form.getAttribute("data-cap"), 10);
    var message = "";
    if (!n) message = "Select one or more images first.";
    else if (cap && n > cap) message = "A zip holds at most " + cap + " images; you selected " + n + ". Select fewer.";
    if (message) {
      event.preventDefault();
      if (status) {
        status.textContent = message;
        status.classList.add("error");
      }
    } else if (status) {
      status.textContent = "Preparing the zip of " + n + " images…";
      status.classList.remove("error");
    }
  });

  document.addEventListener("htmx:afterSettle", showCount);
})();
