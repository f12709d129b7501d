// FluxWeb's own small script, for what htmx cannot do: Ctrl+Enter, the running clocks on job cards, toasts
// and browser notifications for jobs that end (the server says which, in the one poll's HX-Trigger), and the
// low-balance warning. No inline scripts: a strict Content-Security-Policy allows this file.
(function () {
  "use strict";

  // Ctrl+Enter (Cmd+Enter on a Mac) in the generate form submits it, through htmx like the button.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    var form = event.target.closest && event.target.closest("#generate-form");
    if (!form) return;
    event.preventDefault();
    var button = document.getElementById("generate-button");
    if (button && button.disabled) return;
    if (form.requestSubmit) form.requestSubmit(button || undefined);
    else if (button) button.click();
  });

  // Elapsed seconds on running cards, ticking between polls (the poll only sends cards that changed).
  function tick() {
    var now = Date.now();
    document.querySelectorAll(".job time[data-since]").forEach(function (el) {
      var since = Date.parse(el.getAttribute("data-since"));
      if (!isNaN(since)) el.textContent = String(Math.max(0, Math.round((now - since) / 1000)));
    });
  }
  setInterval(tick, 1000);

  // Toasts: one live region (#toasts, in base.html); each note stays 8 s, or until clicked.
  function toast(text, kind, url) {
    var region = document.getElementById("toasts");
    if (!region) return;
    var note = document.createElement(url ? "a" : "div");
    note.className = "toast " + (kind || "");
    note.textContent = text;
    if (url) note.href = url;
    region.appendChild(note);
    setTimeout(function () { note.remove(); }, 8000);
  }

  function canNotify() {
    return "Notification" in window && Notification.permission === "granted";
  }

  // Turned off in Settings: the studio's job list says so (data-notifications="off").
  function notificationsOff() {
    return !!document.querySelector("[data-notifications=off]");
  }

  document.body.addEventListener("job-finished", function (event) {
    if (notificationsOff()) return;
    var jobs = (event.detail && event.detail.jobs) || [];
    jobs.forEach(function (job) {
      toast(job.text, job.status, job.url);
      if (document.hidden && canNotify()) {
        var shown = new Notification("FluxWeb", { body: job.text, tag: "job-" + job.id });
        shown.onclick = function () { window.focus(); shown.close(); };
      }
    });
  });

  // A viewer's refused action (accounts.access.refusal): a 403 whose words come as an event.
  document.body.addEventListener("access-refused", function (event) {
    toast((event.detail && event.detail.text) || "You may not do that.", "warning");
  });

  document.body.addEventListener("balance-low", function (event) {
    toast((event.detail && event.detail.text) || "Your balance is low.", "warning");
  });

  // Browser notifications only after the user asks for them with the button.
  var button = document.getElementById("notify-button");
  if (button && "Notification" in window && Notification.permission === "default") {
    button.hidden = false;
    button.addEventListener("click", function () {
      Notification.requestPermission().then(function (answer) {
        button.hidden = true;
        toast(answer === "granted" ? "You will be notified when a job ends while this tab is hidden."
                                   : "Notifications stay off.", answer === "granted" ? "" : "warning");
      });
    });
  }

  // A refused Generate's reason stays under the button until the form is edited. A price asked for before
  // the refusal (the prompt's blur as the button is pressed, or the typing pause that ends just after it)
  // must not clear it when its answer lands afterwards: the refusal came with a fresh price of its own.
  var edits = 0;
  var editsAtRefusal = -1;
  function edited(event) {
    if (event.target.closest && event.target.closest("#generate-form")) edits += 1;
  }
  document.addEventListener("input", edited, true);
  document.addEventListener("change", edited, true);
  document.body.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (!target) return;
    if (target.id === "form-error") editsAtRefusal = edits;
    if (target.id !== "quote" || edits !== editsAtRefusal) return;
    var shown = document.getElementById("form-error");
    if (shown && shown.textContent.trim()) event.detail.shouldSwap = false;
  });

  // A gallery image already among the references is not added twice (the form counts each once anyway;
  // this keeps the chips honest whichever gallery or lightbox button sent it).
  document.body.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (!target || target.id !== "references") return;
    var match = /id="(ref-image-\d+)"/.exec(event.detail.serverResponse || "");
    if (match && document.getElementById(match[1])) event.detail.shouldSwap = false;
  });

  // Jobs made from the lightbox (Rerun, Variations, Compare) come with a `jobs-created` event naming them:
  // their cards go to the top of "Your jobs", where the page's one poll watches them like any other.
  document.body.addEventListener("jobs-created", function (event) {
    var list = document.getElementById("jobs");
    if (!list || !window.htmx) return;
    var ids = ((event.detail && event.detail.jobs) || []).filter(function (id) {
      return !document.getElementById("job-" + id);
    });
    if (!ids.length) return;
    var query = ids.map(function (id) { return "ids=" + encodeURIComponent(id); }).join("&");
    window.htmx.ajax("GET", list.getAttribute("data-added-url") + "?" + query, { target: "#jobs", swap: "afterbegin" });
  });

  // After a Generate, bring the new card into view on a narrow screen (the form fills the phone). Only
  // after a Generate (a POST): the list's first load, a GET, leaves the page at its top.
  document.body.addEventListener("htmx:afterSwap", function (event) {
    var posted = event.detail.requestConfig && event.detail.requestConfig.verb === "post";
    if (posted && event.detail.target && event.detail.target.id === "jobs" && window.innerWidth < 760) {
      var card = document.querySelector("#jobs .job");
      var status = document.getElementById("form-status");
      if (status && status.textContent) status.scrollIntoView({ block: "nearest" });
      else if (card) card.scrollIntoView({ block: "nearest" });
    }
  });
})();
