"""FluxWeb settings: one module, every option an environment variable (see contract.md)."""

import base64
import hashlib
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DEV_SECRET_KEY = "dev-only-fluxweb-secret-key-never-use-in-production"


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be 1 or 0, not {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from None


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def database_from_url(url: str) -> dict:
    """`sqlite:///path` or `postgres://user:pass@host:port/db`."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return sqlite_database(Path(unquote(parts.path)))
    if parts.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
        }
    raise ImproperlyConfigured(f"DATABASE_URL must start with sqlite:/// or postgres://, not {url!r}")


def sqlite_database(path: Path) -> dict:
    # IMMEDIATE transactions wait for the busy timeout instead of failing with "database is locked";
    # WAL lets readers run beside the writer (reliability.md 1.4, performance.md: 385 vs 112 tasks/s).
    return {
        "ENGINE": "fluxweb.sqlite",
        "NAME": path,
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        # A file, not memory, so a real qcluster process can share the test database.
        "TEST": {"NAME": path.with_name("test-" + path.name)},
    }


DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off.")
    SECRET_KEY = DEV_SECRET_KEY
if SECRET_KEY == DEV_SECRET_KEY and not DEBUG:
    raise ImproperlyConfigured("Refusing to start with the development secret key while DJANGO_DEBUG is off.")

# Rotating the secret: the new one in DJANGO_SECRET_KEY, the old one here until sessions and signed links made
# with it have expired (docs/operations.md).
SECRET_KEY_FALLBACKS = env_list("DJANGO_SECRET_KEY_FALLBACKS", "")

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1")

DATA_DIR = Path(os.environ.get("FLUXWEB_DATA_DIR", BASE_DIR / "var")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)
SITE_URL = os.environ.get("FLUXWEB_SITE_URL", "http://127.0.0.1:8000").rstrip("/")
CSRF_TRUSTED_ORIGINS = [SITE_URL] if SITE_URL.startswith("https://") else []

_fernet_keys = env_list("FLUXWEB_FERNET_KEYS", "")
if not _fernet_keys:
    if not DEBUG:
        raise ImproperlyConfigured("FLUXWEB_FERNET_KEYS is required when DJANGO_DEBUG is off.")
    _fernet_keys = [base64.urlsafe_b64encode(hashlib.sha256(SECRET_KEY.encode()).digest()).decode()]
FERNET_KEYS = _fernet_keys

INSTALLED_APPS = [
    "django.contrib.admin",
    # Before django.contrib.auth, so its `createsuperuser` (audited) is the one manage.py runs.
    "accounts",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "django_q",
    "axes",
    "generations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "fluxweb.middleware.RequestLimitsMiddleware",
    "fluxweb.middleware.DatabaseBusyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

# Login throttling (django-axes): a username tried from one address with FLUXWEB_LOGIN_FAILURE_LIMIT wrong
# passwords is refused, the right one included, for FLUXWEB_LOGIN_COOLOFF_MINUTES. The address is the
# connection's, or behind FLUXWEB_TRUSTED_PROXIES the one the proxy saw (fluxweb/proxy.py): else every
# member would share the proxy's address, and a client could name any address it likes.
# Axes first, then ModelBackend with each request's user loaded together with its role (accounts/backends.py),
# then sign-in with OpenID Connect. Sessions made before ProfileBackend name the old backend, so people log
# in once more after that upgrade.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "accounts.backends.ProfileBackend",
    "accounts.oidc.Backend",
]
AXES_FAILURE_LIMIT = env_int("FLUXWEB_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("FLUXWEB_LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_CLIENT_IP_CALLABLE = "fluxweb.proxy.client_ip"
FLUXWEB_TRUSTED_PROXIES = env_list("FLUXWEB_TRUSTED_PROXIES", "")

ROOT_URLCONF = "fluxweb.urls"
WSGI_APPLICATION = "fluxweb.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    }
]

if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
else:
    DATABASES = {"default": sqlite_database(DATA_DIR / "fluxweb.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "studio"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
# Serve static files straight from the app and static/ folders, so no collectstatic step is needed.
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(exist_ok=True)


# -- media storage (issue 10, item 2) -- begin ----------------------------------------------------------------
def media_storage(env: Mapping[str, str], media_root: Path) -> dict:
    """The `default` storage: files under `media_root`, or with FLUXWEB_STORAGE=s3 a private S3-compatible
    bucket through django-storages. Credentials come from the environment as boto3 reads them
    (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an instance role), never from a setting written down."""
    kind = env.get("FLUXWEB_STORAGE", "") or "local"
    if kind == "local":
        return {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": media_root}}
    if kind != "s3":
        raise ImproperlyConfigured(f"FLUXWEB_STORAGE must be local or s3, not {kind!r}")
    if env.get("FLUXWEB_SENDFILE_HEADER") == "X-Sendfile":
        raise ImproperlyConfigured(
            "X-Sendfile sends files from disk: with FLUXWEB_STORAGE=s3 use X-Accel-Redirect."
        )
    bucket = env.get("FLUXWEB_S3_BUCKET", "")
    if not bucket:
        raise ImproperlyConfigured("FLUXWEB_STORAGE=s3 needs FLUXWEB_S3_BUCKET.")
    expire = env.get("FLUXWEB_S3_URL_EXPIRE", "") or "300"
    if not expire.isdigit() or not 1 <= int(expire) <= 3600:
        raise ImproperlyConfigured(f"FLUXWEB_S3_URL_EXPIRE must be 1 to 3600 seconds, not {expire!r}")
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": env.get("FLUXWEB_S3_ENDPOINT_URL") or None,  # unset: AWS itself
            "region_name": env.get("FLUXWEB_S3_REGION") or None,
            "location": env.get("FLUXWEB_S3_PREFIX", "").strip("/"),
            # Private: no ACL is ever set (the bucket's own, private, applies) and every URL is signed and
            # short-lived; media is served by a view that checks access first, then redirects to that URL.
            "default_acl": None,
            "querystring_auth": True,
            "signature_version": "s3v4",
            "querystring_expire": int(expire),
            "file_overwrite": False,  # as on disk: a name already taken gets a new one
            "max_memory_size": 4 * 1024 * 1024,  # a larger file read back spills to a temporary file
        },
    }


FLUXWEB_STORAGE = os.environ.get("FLUXWEB_STORAGE", "") or "local"
STORAGES = {
    "default": media_storage(os.environ, DATA_DIR / "media"),
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Images are team-private: served by a view that checks the session or token, never by MEDIA_URL.
MEDIA_ROOT = DATA_DIR / "media"
# How that view hands over the bytes: "" streams them (local) or redirects to a signed URL (s3);
# "X-Accel-Redirect" lets nginx send them (an internal /_media/ location on disk, /_s3/ for a bucket);
# "X-Sendfile" (Apache, local files only).
FLUXWEB_SENDFILE_HEADER = os.environ.get("FLUXWEB_SENDFILE_HEADER", "")
if FLUXWEB_SENDFILE_HEADER not in ("", "X-Accel-Redirect", "X-Sendfile"):
    raise ImproperlyConfigured(
        f"FLUXWEB_SENDFILE_HEADER must be X-Accel-Redirect or X-Sendfile, not {FLUXWEB_SENDFILE_HEADER!r}"
    )
# -- media storage -- end -------------------------------------------------------------------------------------

# HTTPS (check --deploy): an https FLUXWEB_SITE_URL turns on secure cookies, the redirect to https and HSTS.
# Behind a proxy that ends TLS, FLUXWEB_PROXY_SSL_HEADER names the header it sets to "https" (nginx:
# X-Forwarded-Proto); without it Django sees plain http and the redirect would loop.
HTTPS = SITE_URL.startswith("https://")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = env_bool("FLUXWEB_SSL_REDIRECT", HTTPS)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancers probe over plain http
SECURE_HSTS_SECONDS = env_int("FLUXWEB_HSTS_SECONDS", 31536000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("FLUXWEB_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("FLUXWEB_HSTS_PRELOAD", False)
if not SECURE_HSTS_PRELOAD:
    # Asking browsers to hard-code the domain is its owner's decision, not a default (security.W021).
    SILENCED_SYSTEM_CHECKS = ["security.W021"]
if os.environ.get("FLUXWEB_PROXY_SSL_HEADER"):
    SECURE_PROXY_SSL_HEADER = (
        "HTTP_" + os.environ["FLUXWEB_PROXY_SSL_HEADER"].upper().replace("-", "_"),
        "https",
    )

# Content-Security-Policy (django-csp; Django 5.2 has no SECURE_CSP): scripts, styles, images and requests
# from this site only. Templates carry no inline script, style or event handler, and htmx runs without eval.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# Money: integer credits; one credit is worth this many US dollars (providers.md section 8).
FLUXWEB_CREDIT_USD = os.environ.get("FLUXWEB_CREDIT_USD", "0.001")
# Generation engine.
FLUXWEB_JOB_DEADLINE = env_int("FLUXWEB_JOB_DEADLINE", 600)  # seconds from submit to give up and refund
FLUXWEB_POLL_CONCURRENCY = env_int("FLUXWEB_POLL_CONCURRENCY", 10)
# Threads in the sweeper's worker that download what it finds done, beside the queued ingest tasks (issue 9.5:
# the sweeper held one worker of two mostly asleep while the other alone ingested a burst). 0: tasks only.
FLUXWEB_SWEEP_INGESTS = env_int("FLUXWEB_SWEEP_INGESTS", 2)
FLUXWEB_MAX_DOWNLOAD_BYTES = env_int("FLUXWEB_MAX_DOWNLOAD_BYTES", 40 * 1024 * 1024)
FLUXWEB_MAX_UPLOAD_BYTES = env_int("FLUXWEB_MAX_UPLOAD_BYTES", 10 * 1024 * 1024)
FLUXWEB_MAX_UPLOAD_STORAGE_BYTES = env_int("FLUXWEB_MAX_UPLOAD_STORAGE_BYTES", 200 * 1024 * 1024)
FLUXWEB_ZIP_MAX_IMAGES = env_int("FLUXWEB_ZIP_MAX_IMAGES", 500)  # images one bulk download may hold
# Hosts images may be downloaded from besides each provider's documented CDN: the sandbox on loopback.
FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS = env_bool("FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS", DEBUG)
FLUXWEB_SANDBOX_URL = os.environ.get("FLUXWEB_SANDBOX_URL", "http://127.0.0.1:8765")

# django-q2 (reliability.md 1.1, 1.5): `timeout` covers the longest task, a synchronous provider's 120 s submit
# call; `retry` is counted from dequeue, so it covers a task's run plus the guard's 3 s plus its wait behind
# the tasks fetched ahead of it (the cluster's queue, queue_limit, and the pusher's hand, bulk - 1: over the
# workers, three tasks per worker) -- else the broker hands out a second copy. Attempts are bounded, and a
# cluster that was down does not fire every missed schedule slot. Issue 9.5, bursts: the pusher fetches
# `bulk` tasks per query and keeps two per worker queued, so a worker that ends a task starts the next at
# once; successful tasks are not stored (`save_limit` -1: with 1000 the monitor read the stored results
# back on every save, 53 % of a core in a 2,000-job run). Failed tasks are still stored.
Q_WORKERS = env_int("FLUXWEB_Q_WORKERS", 4)
Q_TIMEOUT = 150
Q_CLUSTER = {
    "name": os.environ.get("FLUXWEB_Q_NAME", "fluxweb"),
    # The sweeper holds one worker while jobs are in flight; the others submit and ingest.
    "workers": Q_WORKERS,
    "timeout": Q_TIMEOUT,
    "retry": Q_TIMEOUT + 3 + 3 * Q_TIMEOUT + 7,  # 610 s
    "max_attempts": 3,
    "catch_up": False,
    "queue_limit": 2 * Q_WORKERS,
    "bulk": Q_WORKERS,
    "save_limit": -1,
    "ack_failures": True,
    "poll": 0.1,
    "label": "Tasks",
}
if os.environ.get("REDIS_URL"):
    Q_CLUSTER["redis"] = os.environ["REDIS_URL"]
else:
    Q_CLUSTER["orm"] = "default"

# The cache holds lists every web process must show alike (the studio's provider accounts, the gallery's
# filter options: generations/shared.py), so it is shared between processes: Redis when REDIS_URL is set,
# else files in the data dir, which every process serving the same media shares.
if os.environ.get("REDIS_URL"):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["REDIS_URL"],
            "KEY_PREFIX": "fluxweb",
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": DATA_DIR / "cache",
        }
    }

# FLUXWEB_LOG_FORMAT=json: one JSON object per line, with the generation id (fluxweb/logs.py); else plain text.
LOG_FORMAT = os.environ.get("FLUXWEB_LOG_FORMAT", "text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"FLUXWEB_LOG_FORMAT must be text or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"generation": {"()": "fluxweb.logs.GenerationFilter"}},
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "fluxweb.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["generation"]},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "generations": {"level": os.environ.get("FLUXWEB_LOG_LEVEL", "INFO")},
        # django-q2 adds a handler of its own only where none is configured: ours, in the chosen format.
        "django-q": {"level": "INFO"},
        # httpx logs request lines at INFO; keep it quiet so nothing near a key reaches the log.
        "httpx": {"level": "WARNING"},
    },
}

# Team accounts (README "Team accounts"): invitations, new users' credits, and e-mail for invitations and
# password resets (printed to the console unless an SMTP host is set).
FLUXWEB_INVITE_DAYS = env_int("FLUXWEB_INVITE_DAYS", 7)  # how long an invitation link stays valid
FLUXWEB_NEW_USER_CREDITS = env_int("FLUXWEB_NEW_USER_CREDITS", 0)  # granted when an invitation is accepted
EMAIL_HOST = os.environ.get("FLUXWEB_SMTP_HOST", "")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env_int("FLUXWEB_SMTP_PORT", 587)
    EMAIL_HOST_USER = os.environ.get("FLUXWEB_SMTP_USER", "")
    EMAIL_HOST_PASSWORD = os.environ.get("FLUXWEB_SMTP_PASSWORD", "")
    EMAIL_USE_TLS = env_bool("FLUXWEB_SMTP_TLS", True)
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = os.environ.get("FLUXWEB_FROM_EMAIL", "FluxWeb <fluxweb@localhost>")

# Sign-in with OpenID Connect (accounts/oidc.py, mozilla-django-oidc): on when an issuer is set; its endpoints
# come from the issuer's discovery document. Register {FLUXWEB_SITE_URL}/account/oidc/callback/ at the provider.
FLUXWEB_OIDC_ISSUER = os.environ.get("FLUXWEB_OIDC_ISSUER", "").rstrip("/")
FLUXWEB_OIDC_NAME = os.environ.get("FLUXWEB_OIDC_NAME", "your company account")  # "Sign in with ..."
OIDC_RP_CLIENT_ID = os.environ.get("FLUXWEB_OIDC_CLIENT_ID", "")
OIDC_RP_CLIENT_SECRET = os.environ.get("FLUXWEB_OIDC_CLIENT_SECRET", "")
OIDC_RP_SIGN_ALGO = os.environ.get("FLUXWEB_OIDC_SIGN_ALGO", "RS256")
OIDC_RP_SCOPES = os.environ.get("FLUXWEB_OIDC_SCOPES", "openid email profile")
OIDC_USE_PKCE = True
OIDC_TIMEOUT = 10
FLUXWEB_OIDC_GROUPS_CLAIM = os.environ.get(
    "FLUXWEB_OIDC_GROUPS_CLAIM", ""
)  # e.g. "groups"; empty: no mapping
FLUXWEB_OIDC_ADMIN_GROUPS = env_list("FLUXWEB_OIDC_ADMIN_GROUPS", "")
FLUXWEB_OIDC_MEMBER_GROUPS = env_list("FLUXWEB_OIDC_MEMBER_GROUPS", "")
FLUXWEB_OIDC_VIEWER_GROUPS = env_list("FLUXWEB_OIDC_VIEWER_GROUPS", "")
FLUXWEB_OIDC_ALLOWED_DOMAINS = env_list("FLUXWEB_OIDC_ALLOWED_DOMAINS", "")  # empty: any domain
FLUXWEB_OIDC_NEW_USERS = os.environ.get("FLUXWEB_OIDC_NEW_USERS", "member")
if FLUXWEB_OIDC_NEW_USERS not in ("member", "pending"):
    raise ImproperlyConfigured(
        f"FLUXWEB_OIDC_NEW_USERS must be member or pending, not {FLUXWEB_OIDC_NEW_USERS!r}"
    )
if FLUXWEB_OIDC_ISSUER and not (OIDC_RP_CLIENT_ID and OIDC_RP_CLIENT_SECRET):
    raise ImproperlyConfigured(
        "FLUXWEB_OIDC_ISSUER needs FLUXWEB_OIDC_CLIENT_ID and FLUXWEB_OIDC_CLIENT_SECRET."
    )
FLUXWEB_PASSWORD_LOGIN = env_bool("FLUXWEB_PASSWORD_LOGIN", True)  # 0: only the identity provider signs in
if not FLUXWEB_PASSWORD_LOGIN and not FLUXWEB_OIDC_ISSUER:
    raise ImproperlyConfigured("FLUXWEB_PASSWORD_LOGIN=0 needs FLUXWEB_OIDC_ISSUER, or nobody could log in.")
