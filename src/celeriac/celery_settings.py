"""Every Celery 5.x setting name, and celeriac's answer to it.

A project moving from Celery brings its settings along: lowercase names, the old
uppercase ones (``BROKER_URL``, ``CELERYD_PREFETCH_MULTIPLIER``), or Django's
``CELERY_``-prefixed ones. None of them may be dropped without a word, so each Celery
name has exactly one answer here:

- ``SAME``: celeriac has the setting under the same name, with Celery's meaning;
- ``MAPPED``: celeriac does the same job under another name (``target``), and the value
  is carried over (``note`` says how the meaning differs, if it does);
- ``REFUSED``: setting it is an error whose message says why and what to use instead:
  the feature is Celery's alone (a result backend celeriac does not have, kombu's
  exchanges), celeriac does it differently, or it is not built yet.

``docs/celery-settings.md`` is generated from this table (``markdown()``; the command is
in that file) and a test keeps the two equal, and walks every name through
``Settings.update``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Answer(enum.Enum):
    SAME = "same"
    MAPPED = "mapped"
    REFUSED = "refused"


@dataclass(frozen=True)
class CelerySetting:
    name: str  # Celery's lowercase name
    old: str | None  # Celery's old uppercase name, where it had one
    answer: Answer
    target: str | None = None  # MAPPED: the celeriac setting the value goes to
    note: str = ""  # MAPPED: how it differs; REFUSED: why, and what to use instead


_BACKENDS = ("celeriac stores results in SQLite, Redis or rpc:// (RabbitMQ); "
             "set result_backend to one of those")
_KOMBU = ("celeriac routes by queue name only; declare queues with task_queues "
          "(celeriac.Queue) and route with task_routes")
_NOT_YET_EVENTS = "task events and remote control are not built yet (issue 12)"
# Celery's auth serializer settings: why each is refused, and what to set instead.
_MOVE = "see docs/security.md, Moving from Celery's auth serializer"
_SECURITY_NOTES = {
    "security_key": (
        "Celery signs with an X.509 (RSA) private key; celeriac signs with an Ed25519 "
        "private key (task_signing_private_key, PEM text or path, with "
        "task_signing_key_id) or an HMAC secret (task_signing_keys); an RSA key cannot "
        f"be carried over: make a new pair; {_MOVE}"),
    "security_certificate": (
        "celeriac needs no certificates: workers list the signers' Ed25519 public keys "
        f"by key id (task_signing_public_keys); {_MOVE}"),
    "security_cert_store": (
        "celeriac verifies against the public keys (or HMAC secrets) it lists by key id, "
        "not a certificate store: task_signing_public_keys, several at once for "
        f"rotation; {_MOVE}"),
    "security_digest": (
        "celeriac signs with HMAC-SHA256 or Ed25519, chosen by the key, with no digest "
        f"to pick; {_MOVE}"),
    "security_key_password": (
        "celeriac reads unencrypted PEM keys: protect the key file with its permissions "
        f"or give the key from a secret manager; {_MOVE}"),
}
_NO_PARTS = ("give the whole URL in broker_url (scheme://user:password@host:port/vhost)")

# (name, answer, target or None, note). Old uppercase names are in OLD_NAMES below.
_TABLE: tuple[tuple[str, Answer, str | None, str], ...] = (
    ("accept_content", Answer.SAME, None, ""),
    ("beat_cron_starting_deadline", Answer.REFUSED, None,
     "celeriac sends a run that is late by less than 10 s (a beat taking over from "
     "another) and applies the entry's missed policy to older ones: set "
     "\"missed\": \"skip\" or \"run_once\" in the entry (docs/periodic-tasks.md)"),
    ("beat_max_loop_interval", Answer.SAME, None,
     "the longest beat sleeps between passes; 0 (the default) means 0.25 s, so that "
     "schedule changes made with app.beat or `celeriac beat add` apply within a second"),
    ("beat_schedule", Answer.SAME, None,
     "Celery's entry shape (task, schedule, args, kwargs, options), plus \"missed\"; "
     "relative=True is refused (docs/periodic-tasks.md)"),
    ("beat_schedule_filename", Answer.REFUSED, None,
     "celeriac's beat keeps its state on the broker's server (with RabbitMQ, the result "
     "backend's), not in a local file: there is nothing to name"),
    ("beat_scheduler", Answer.REFUSED, None,
     "celeriac has one scheduler, with its state on the server and a leader elected "
     "there; for django-celery-beat's or RedBeat's dynamic entries use app.beat.add "
     "or `celeriac beat add` (docs/periodic-tasks.md)"),
    ("beat_sync_every", Answer.REFUSED, None,
     "celeriac's beat records each run on the server before sending it"),
    ("broker_channel_error_retry", Answer.REFUSED, None,
     "celeriac retries channel errors within broker_connection_timeout always"),
    ("broker_connection_max_retries", Answer.SAME, None,
     "attempts a worker makes to reach its broker at start (None or 0: forever); a "
     "running worker always reconnects, and its watchdog (worker_watchdog_timeout) "
     "stops a process that cannot"),
    ("broker_connection_retry", Answer.REFUSED, None,
     "celeriac always reconnects a lost broker connection; the worker's watchdog "
     "(worker_watchdog_timeout) stops a process that cannot"),
    ("broker_connection_retry_on_startup", Answer.SAME, None,
     "True by default: a worker waits for its broker at start, one log line per "
     "attempt; False: it stops at once with one line"),
    ("broker_connection_timeout", Answer.SAME, None, ""),
    ("broker_failover_strategy", Answer.REFUSED, None,
     "celeriac connects to one broker URL; for Redis failover use sentinel:// "
     "(docs/brokers.md)"),
    ("broker_heartbeat", Answer.SAME, None,
     "seconds between RabbitMQ heartbeats (a worker's consumer heartbeat is "
     "also at most half its lease); not used by other brokers, with a warning"),
    ("broker_heartbeat_checkrate", Answer.REFUSED, None,
     "celeriac's RabbitMQ connection checks heartbeats itself"),
    ("broker_host", Answer.REFUSED, None, _NO_PARTS),
    ("broker_login_method", Answer.REFUSED, None,
     "celeriac logs in to RabbitMQ with PLAIN, from the URL's user and password"),
    ("broker_native_delayed_delivery_queue_type", Answer.REFUSED, None,
     "celeriac's RabbitMQ delays use their own queues (docs/architecture.md)"),
    ("broker_password", Answer.REFUSED, None, _NO_PARTS),
    ("broker_pool_limit", Answer.SAME, None,
     "connections a Redis broker keeps per process (None or 0: no limit); not "
     "used by other brokers, with a warning"),
    ("broker_port", Answer.REFUSED, None, _NO_PARTS),
    ("broker_read_url", Answer.REFUSED, None,
     "celeriac uses one broker_url for reading and writing"),
    ("broker_transport", Answer.REFUSED, None,
     "the broker is chosen by broker_url's scheme (sqlite://, redis://, amqp://)"),
    ("broker_transport_options", Answer.SAME, None, ""),
    ("broker_url", Answer.SAME, None, ""),
    ("broker_use_ssl", Answer.SAME, None,
     "True or a mapping of ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile (or "
     "cert_reqs, ca_certs, certfile, keyfile); broker_url must be rediss:// or amqps:// "
     "(docs/security.md)"),
    ("broker_user", Answer.REFUSED, None, _NO_PARTS),
    ("broker_vhost", Answer.REFUSED, None, _NO_PARTS),
    ("broker_write_url", Answer.REFUSED, None,
     "celeriac uses one broker_url for reading and writing"),
    ("control_exchange", Answer.REFUSED, None,
     "remote control travels on the broker's own control and replies topics (a Redis "
     "stream, a RabbitMQ stream queue, an SQLite table), not on a kombu exchange; their "
     "names follow the broker's key prefix or vhost"),
    ("control_queue_expires", Answer.REFUSED, None,
     "no queue is made per worker or per client for remote control: each reads the "
     "shared control topic from its own position, so there is nothing to expire"),
    ("control_queue_ttl", Answer.REFUSED, None,
     "control requests are kept for a fixed 60 s on the control topic, and a worker "
     "only reads those sent after it started, so an old command never runs late"),
    ("enable_utc", Answer.SAME, None,
     "True (the default): a naive datetime (eta, expires) is UTC; False: wall-"
     "clock time in timezone"),
    ("event_exchange", Answer.REFUSED, None, _NOT_YET_EVENTS),
    ("event_queue_expires", Answer.REFUSED, None, _NOT_YET_EVENTS),
    ("event_queue_prefix", Answer.REFUSED, None, _NOT_YET_EVENTS),
    ("event_queue_ttl", Answer.REFUSED, None, _NOT_YET_EVENTS),
    ("event_serializer", Answer.REFUSED, None, _NOT_YET_EVENTS),
    ("imports", Answer.SAME, None,
     "modules a worker (and every celeriac command) imports after loading the app"),
    ("include", Answer.SAME, None, "as imports, imported after them"),
    ("result_accept_content", Answer.SAME, None,
     "the serializers results are read with (None: accept_content)"),
    ("result_backend", Answer.SAME, None, ""),
    ("result_backend_always_retry", Answer.REFUSED, None,
     "result writes are retried within broker_connection_timeout always"),
    ("result_backend_base_sleep_between_retries_ms", Answer.REFUSED, None,
     "result writes are retried within broker_connection_timeout always"),
    ("result_backend_max_retries", Answer.REFUSED, None,
     "result writes are retried within broker_connection_timeout always"),
    ("result_backend_max_sleep_between_retries_ms", Answer.REFUSED, None,
     "result writes are retried within broker_connection_timeout always"),
    ("result_backend_transport_options", Answer.SAME, None,
     "the Redis result backend's options (master_name and sentinel_kwargs for "
     "sentinel://, key_prefix...); other backends refuse them"),
    ("result_cache_max", Answer.REFUSED, None,
     "AsyncResult keeps a final result once read; there is no shared cache"),
    ("result_chord_join_timeout", Answer.REFUSED, None,
     "chords are counted by the worker (docs/canvas.md); nothing joins"),
    ("result_chord_retry_interval", Answer.REFUSED, None,
     "chords are counted by the worker (docs/canvas.md); nothing polls"),
    ("result_compression", Answer.REFUSED, None,
     "results are stored uncompressed; task_compression compresses messages"),
    ("result_exchange", Answer.REFUSED, None, _KOMBU),
    ("result_exchange_type", Answer.REFUSED, None, _KOMBU),
    ("result_expires", Answer.SAME, None, ""),
    ("result_extended", Answer.REFUSED, None,
     "celeriac stores a task's name with every result, and a failed task's args and "
     "kwargs with its FAILURE (what a retry from the dashboard sends)"),
    ("result_persistent", Answer.REFUSED, None,
     "rpc:// results are transient; use a Redis or SQLite backend to keep them"),
    ("result_serializer", Answer.SAME, None, ""),
    ("task_acks_late", Answer.SAME, None,
     "the default is True in celeriac (at-least-once), False in Celery"),
    ("task_acks_on_failure_or_timeout", Answer.REFUSED, None,
     "a failed task is acked with its FAILURE stored; use Reject to dead-letter it"),
    ("task_allow_error_cb_on_chord_header", Answer.REFUSED, None,
     "error callbacks run for the chord's header tasks always (docs/canvas.md)"),
    ("task_always_eager", Answer.SAME, None, ""),
    ("task_annotations", Answer.SAME, None, ""),
    ("task_compression", Answer.SAME, None, ""),
    ("task_create_missing_queues", Answer.SAME, None, ""),
    ("task_default_delivery_mode", Answer.REFUSED, None,
     "declare transient queues in task_queues (Queue(name, durable=False))"),
    ("task_default_exchange", Answer.REFUSED, None, _KOMBU),
    ("task_default_exchange_type", Answer.REFUSED, None, _KOMBU),
    ("task_default_priority", Answer.SAME, None, ""),
    ("task_default_queue", Answer.SAME, None, "the default is 'celeriac', not 'celery'"),
    ("task_default_queue_type", Answer.MAPPED, "broker_transport_options",
     "becomes broker_transport_options['default_queue_type'] (RabbitMQ)"),
    ("task_default_rate_limit", Answer.SAME, None, ""),
    ("task_default_routing_key", Answer.REFUSED, None, _KOMBU),
    ("task_eager_propagates", Answer.SAME, None, ""),
    ("task_ignore_result", Answer.SAME, None, ""),
    ("task_inherit_parent_priority", Answer.REFUSED, None,
     "set the priority on each signature or with task_routes"),
    ("task_protocol", Answer.REFUSED, None,
     "celeriac has one message format (docs/protocol.md)"),
    ("task_publish_retry", Answer.REFUSED, None,
     "publishing is retried within broker_connection_timeout always, then raises"),
    ("task_publish_retry_policy", Answer.REFUSED, None,
     "publishing is retried within broker_connection_timeout always, then raises"),
    ("task_queue_max_priority", Answer.SAME, None,
     "the highest priority level kept (at most 9, celeriac's ten levels); a higher "
     "priority counts as it"),
    ("task_queues", Answer.SAME, None, ""),
    ("task_reject_on_worker_lost", Answer.SAME, None,
     "True or None: a task whose worker died is delivered again, up to "
     "task_delivery_limit times; False: it is dead-lettered instead of run again "
     "(where Celery stores it as failed)"),
    ("task_remote_tracebacks", Answer.REFUSED, None,
     "AsyncResult.traceback holds the worker's traceback always"),
    ("task_routes", Answer.SAME, None, ""),
    ("task_send_sent_event", Answer.SAME, None,
     "producers emit task-sent on the broker's event topic (celeriac.events)"),
    ("task_serializer", Answer.SAME, None, ""),
    ("task_soft_time_limit", Answer.SAME, None, ""),
    ("task_store_eager_result", Answer.REFUSED, None,
     "eager results live in the EagerResult returned"),
    ("task_store_errors_even_if_ignored", Answer.REFUSED, None,
     "with ignore_result nothing is stored; failures are logged by the worker"),
    ("task_time_limit", Answer.SAME, None, ""),
    ("task_track_started", Answer.SAME, None, ""),
    ("timezone", Answer.SAME, None,
     "an IANA zone name; what a naive datetime means with enable_utc=False, and "
     "the zone of periodic tasks"),
    ("worker_agent", Answer.REFUSED, None, "celeriac has no worker agent"),
    ("worker_autoscaler", Answer.REFUSED, None,
     "celeriac's autoscaler is built in, not a class to replace: set its bounds with "
     "--autoscale=MAX,MIN or worker_autoscale=(max, min), its idle cool-down with "
     "worker_autoscale_keepalive"),
    ("worker_cancel_long_running_tasks_on_connection_loss", Answer.REFUSED, None,
     "a task whose lease is lost runs on, and its result is refused (fencing); "
     "see docs/architecture.md"),
    ("worker_concurrency", Answer.SAME, None, ""),
    ("worker_consumer", Answer.REFUSED, None,
     "the consumer is not pluggable; celeriac has no bootsteps"),
    ("worker_deduplicate_successful_tasks", Answer.REFUSED, None,
     "a task is delivered again only when a worker died or lost its lease mid-task"),
    ("worker_detect_quorum_queues", Answer.REFUSED, None,
     "declare quorum queues with broker_transport_options['quorum_queues']"),
    ("worker_direct", Answer.REFUSED, None, _NOT_YET_EVENTS),
    ("worker_disable_rate_limits", Answer.SAME, None, ""),
    ("worker_enable_prefetch_count_reduction", Answer.REFUSED, None,
     "the prefetch follows the worker's free slots always"),
    ("worker_enable_remote_control", Answer.SAME, None, ""),
    ("worker_enable_soft_shutdown_on_idle", Answer.REFUSED, None,
     "a warm shutdown hands prefetched tasks back at once"),
    ("worker_hijack_root_logger", Answer.SAME, None,
     "True by default: the worker logs to stderr through the root logger; False "
     "leaves the app's own logging configuration alone"),
    ("worker_log_color", Answer.REFUSED, None,
     "the worker's log lines are plain text; colour them in your log viewer"),
    ("worker_log_format", Answer.SAME, None,
     "the format of the worker's log lines (with worker_hijack_root_logger); "
     "\"json\" for one JSON object per line (--log-format json)"),
    ("worker_lost_wait", Answer.REFUSED, None,
     "a dead worker process's tasks come back when their lease runs out"),
    ("worker_max_memory_per_child", Answer.SAME, None, ""),
    ("worker_max_tasks_per_child", Answer.SAME, None, ""),
    ("worker_pool", Answer.SAME, None,
     "prefork, threads, async or solo (no eventlet or gevent)"),
    ("worker_pool_putlocks", Answer.REFUSED, None,
     "each worker process fetches for itself; there is no dispatch lock"),
    ("worker_pool_restarts", Answer.REFUSED, None,
     "the supervisor replaces worker processes by itself"),
    ("worker_prefetch_multiplier", Answer.SAME, None, ""),
    ("worker_proc_alive_timeout", Answer.REFUSED, None,
     "the supervisor watches its processes' exits directly"),
    ("worker_redirect_stdouts", Answer.REFUSED, None,
     "a task's print() goes to the worker's stdout unchanged"),
    ("worker_redirect_stdouts_level", Answer.REFUSED, None,
     "a task's print() goes to the worker's stdout unchanged"),
    ("worker_send_task_events", Answer.SAME, None,
     "on by default in celeriac (off with --without-events); batched, cheap"),
    ("worker_soft_shutdown_timeout", Answer.MAPPED, "worker_shutdown_timeout",
     "celeriac's warm shutdown lets running tasks finish for this long"),
    ("worker_state_db", Answer.REFUSED, None,
     "revoked ids live on the result backend's server, not in a local file"),
    ("worker_task_log_format", Answer.SAME, None,
     "the format of lines a task's own code logs while it runs, with %(task_name)s "
     "and %(task_id)s"),
    ("worker_timer", Answer.REFUSED, None, "celeriac's worker runs on asyncio"),
    ("worker_timer_precision", Answer.REFUSED, None, "celeriac's worker runs on asyncio"),
)

# Whole families of Celery settings for result backends celeriac does not have.
_BACKEND_FAMILIES: dict[str, tuple[str, ...]] = {
    "Azure Block Blob": (
        "azureblockblob_base_path", "azureblockblob_connection_timeout",
        "azureblockblob_container_name", "azureblockblob_read_timeout",
        "azureblockblob_retry_increment_base", "azureblockblob_retry_initial_backoff_sec",
        "azureblockblob_retry_max_attempts"),
    "ArangoDB": ("arangodb_backend_settings",),
    "cache (memcached)": ("cache_backend", "cache_backend_options"),
    "Cassandra": (
        "cassandra_auth_kwargs", "cassandra_auth_provider", "cassandra_bundle_path",
        "cassandra_entry_ttl", "cassandra_keyspace", "cassandra_options", "cassandra_port",
        "cassandra_read_consistency", "cassandra_servers", "cassandra_table",
        "cassandra_write_consistency"),
    "CosmosDB": (
        "cosmosdbsql_collection_name", "cosmosdbsql_consistency_level",
        "cosmosdbsql_database_name", "cosmosdbsql_max_retry_attempts",
        "cosmosdbsql_max_retry_wait_time"),
    "Couchbase": ("couchbase_backend_settings",),
    "SQLAlchemy database": (
        "database_create_tables_at_setup", "database_engine_options",
        "database_short_lived_sessions", "database_table_names", "database_table_schemas",
        "database_url"),
    "Elasticsearch": (
        "elasticsearch_max_retries", "elasticsearch_retry_on_timeout",
        "elasticsearch_save_meta_as_text", "elasticsearch_timeout"),
    "Google Cloud Storage": ("gcs_base_path", "gcs_bucket", "gcs_project", "gcs_ttl"),
    "MongoDB": ("mongodb_backend_settings",),
    "S3": ("s3_access_key_id", "s3_base_path", "s3_bucket", "s3_endpoint_url", "s3_region",
           "s3_secret_access_key"),
}

# Celery's separate Redis backend settings: celeriac reads all of it from the URL.
_REDIS_PARTS = ("redis_db", "redis_host", "redis_password", "redis_port", "redis_username")
_REDIS_OPTIONS = ("redis_max_connections", "redis_retry_on_timeout",
                  "redis_socket_connect_timeout", "redis_socket_keepalive",
                  "redis_socket_timeout")

_SECURITY = ("security_cert_store", "security_certificate", "security_digest",
             "security_key", "security_key_password")

# Celery's old uppercase names (its "new lowercase settings" table) -> the new name.
OLD_NAMES: dict[str, str] = {
    "CELERY_ACCEPT_CONTENT": "accept_content",
    "CELERY_ARANGODB_BACKEND_SETTINGS": "arangodb_backend_settings",
    "CELERYBEAT_CRON_STARTING_DEADLINE": "beat_cron_starting_deadline",
    "CELERYBEAT_MAX_LOOP_INTERVAL": "beat_max_loop_interval",
    "CELERYBEAT_SCHEDULE": "beat_schedule",
    "CELERYBEAT_SCHEDULE_FILENAME": "beat_schedule_filename",
    "CELERYBEAT_SCHEDULER": "beat_scheduler",
    "CELERYBEAT_SYNC_EVERY": "beat_sync_every",
    "CELERY_CACHE_BACKEND": "cache_backend",
    "CELERY_CACHE_BACKEND_OPTIONS": "cache_backend_options",
    "CELERY_COUCHBASE_BACKEND_SETTINGS": "couchbase_backend_settings",
    "CELERY_RESULT_ENGINE_OPTIONS": "database_engine_options",
    "CELERY_RESULT_DB_SHORT_LIVED_SESSIONS": "database_short_lived_sessions",
    "CELERY_RESULT_DB_TABLENAMES": "database_table_names",
    "CELERY_RESULT_DBURI": "database_url",
    "CELERY_ELASTICSEARCH_MAX_RETRIES": "elasticsearch_max_retries",
    "CELERY_ELASTICSEARCH_RETRY_ON_TIMEOUT": "elasticsearch_retry_on_timeout",
    "CELERY_ELASTICSEARCH_SAVE_META_AS_TEXT": "elasticsearch_save_meta_as_text",
    "CELERY_ELASTICSEARCH_TIMEOUT": "elasticsearch_timeout",
    "CELERY_EVENT_EXCHANGE": "event_exchange",
    "CELERY_EVENT_QUEUE_EXPIRES": "event_queue_expires",
    "CELERY_EVENT_QUEUE_PREFIX": "event_queue_prefix",
    "CELERY_EVENT_QUEUE_TTL": "event_queue_ttl",
    "CELERY_EVENT_SERIALIZER": "event_serializer",
    "CELERY_IMPORTS": "imports",
    "CELERY_INCLUDE": "include",
    "CELERY_MONGODB_BACKEND_SETTINGS": "mongodb_backend_settings",
    "CELERY_REDIS_BACKEND_USE_SSL": "redis_backend_use_ssl",
    "CELERY_REDIS_DB": "redis_db",
    "CELERY_REDIS_HOST": "redis_host",
    "CELERY_REDIS_MAX_CONNECTIONS": "redis_max_connections",
    "CELERY_REDIS_PASSWORD": "redis_password",
    "CELERY_REDIS_PORT": "redis_port",
    "CELERY_REDIS_RETRY_ON_TIMEOUT": "redis_retry_on_timeout",
    "CELERY_REDIS_SOCKET_CONNECT_TIMEOUT": "redis_socket_connect_timeout",
    "CELERY_REDIS_SOCKET_KEEPALIVE": "redis_socket_keepalive",
    "CELERY_REDIS_SOCKET_TIMEOUT": "redis_socket_timeout",
    "CELERY_REDIS_USERNAME": "redis_username",
    "CELERY_RESULT_BACKEND": "result_backend",
    "CELERY_RESULT_BACKEND_ALWAYS_RETRY": "result_backend_always_retry",
    "CELERY_RESULT_BACKEND_BASE_SLEEP_BETWEEN_RETRIES_MS":
        "result_backend_base_sleep_between_retries_ms",
    "CELERY_RESULT_BACKEND_MAX_RETRIES": "result_backend_max_retries",
    "CELERY_RESULT_BACKEND_MAX_SLEEP_BETWEEN_RETRIES_MS":
        "result_backend_max_sleep_between_retries_ms",
    "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS": "result_backend_transport_options",
    "CELERY_MAX_CACHED_RESULTS": "result_cache_max",
    "CELERY_RESULT_CHORD_JOIN_TIMEOUT": "result_chord_join_timeout",
    "CELERY_RESULT_CHORD_RETRY_INTERVAL": "result_chord_retry_interval",
    "CELERY_RESULT_COMPRESSION": "result_compression",
    "CELERY_RESULT_EXCHANGE": "result_exchange",
    "CELERY_RESULT_EXCHANGE_TYPE": "result_exchange_type",
    "CELERY_TASK_RESULT_EXPIRES": "result_expires",
    "CELERY_RESULT_EXTENDED": "result_extended",
    "CELERY_RESULT_PERSISTENT": "result_persistent",
    "CELERY_RESULT_SERIALIZER": "result_serializer",
    "CELERY_SECURITY_CERT_STORE": "security_cert_store",
    "CELERY_SECURITY_CERTIFICATE": "security_certificate",
    "CELERY_SECURITY_DIGEST": "security_digest",
    "CELERY_SECURITY_KEY": "security_key",
    "CELERY_SECURITY_KEY_PASSWORD": "security_key_password",
    "CELERY_ACKS_LATE": "task_acks_late",
    "CELERY_ACKS_ON_FAILURE_OR_TIMEOUT": "task_acks_on_failure_or_timeout",
    "CELERY_ALLOW_ERROR_CB_ON_CHORD_HEADER": "task_allow_error_cb_on_chord_header",
    "CELERY_ALWAYS_EAGER": "task_always_eager",
    "CELERY_ANNOTATIONS": "task_annotations",
    "CELERY_MESSAGE_COMPRESSION": "task_compression",
    "CELERY_CREATE_MISSING_QUEUES": "task_create_missing_queues",
    "CELERY_DEFAULT_DELIVERY_MODE": "task_default_delivery_mode",
    "CELERY_DEFAULT_EXCHANGE": "task_default_exchange",
    "CELERY_DEFAULT_EXCHANGE_TYPE": "task_default_exchange_type",
    "CELERY_DEFAULT_PRIORITY": "task_default_priority",
    "CELERY_DEFAULT_QUEUE": "task_default_queue",
    "CELERY_DEFAULT_QUEUE_TYPE": "task_default_queue_type",
    "CELERY_DEFAULT_RATE_LIMIT": "task_default_rate_limit",
    "CELERY_DEFAULT_ROUTING_KEY": "task_default_routing_key",
    "CELERY_EAGER_PROPAGATES_EXCEPTIONS": "task_eager_propagates",
    "CELERY_IGNORE_RESULT": "task_ignore_result",
    "CELERY_INHERIT_PARENT_PRIORITY": "task_inherit_parent_priority",
    "CELERY_TASK_PROTOCOL": "task_protocol",
    "CELERY_TASK_PUBLISH_RETRY": "task_publish_retry",
    "CELERY_TASK_PUBLISH_RETRY_POLICY": "task_publish_retry_policy",
    "CELERY_QUEUE_MAX_PRIORITY": "task_queue_max_priority",
    "CELERY_QUEUES": "task_queues",
    "CELERY_REJECT_ON_WORKER_LOST": "task_reject_on_worker_lost",
    "CELERY_REMOTE_TRACEBACKS": "task_remote_tracebacks",
    "CELERY_ROUTES": "task_routes",
    "CELERY_SEND_TASK_SENT_EVENT": "task_send_sent_event",
    "CELERY_TASK_SERIALIZER": "task_serializer",
    "CELERYD_TASK_SOFT_TIME_LIMIT": "task_soft_time_limit",
    "CELERY_STORE_EAGER_RESULT": "task_store_eager_result",
    "CELERY_STORE_ERRORS_EVEN_IF_IGNORED": "task_store_errors_even_if_ignored",
    "CELERYD_TASK_TIME_LIMIT": "task_time_limit",
    "CELERY_TRACK_STARTED": "task_track_started",
    "CELERY_TIMEZONE": "timezone",
    "CELERYD_AGENT": "worker_agent",
    "CELERYD_AUTOSCALER": "worker_autoscaler",
    "CELERYD_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS":
        "worker_cancel_long_running_tasks_on_connection_loss",
    "CELERYD_CONCURRENCY": "worker_concurrency",
    "CELERYD_CONSUMER": "worker_consumer",
    "CELERYD_DEDUPLICATE_SUCCESSFUL_TASKS": "worker_deduplicate_successful_tasks",
    "CELERYD_DETECT_QUORUM_QUEUES": "worker_detect_quorum_queues",
    "CELERY_WORKER_DIRECT": "worker_direct",
    "CELERY_DISABLE_RATE_LIMITS": "worker_disable_rate_limits",
    "CELERYD_ENABLE_PREFETCH_COUNT_REDUCTION": "worker_enable_prefetch_count_reduction",
    "CELERY_ENABLE_REMOTE_CONTROL": "worker_enable_remote_control",
    "CELERYD_ENABLE_SOFT_SHUTDOWN_ON_IDLE": "worker_enable_soft_shutdown_on_idle",
    "CELERYD_HIJACK_ROOT_LOGGER": "worker_hijack_root_logger",
    "CELERYD_LOG_COLOR": "worker_log_color",
    "CELERYD_LOG_FORMAT": "worker_log_format",
    "CELERYD_WORKER_LOST_WAIT": "worker_lost_wait",
    "CELERYD_MAX_MEMORY_PER_CHILD": "worker_max_memory_per_child",
    "CELERYD_MAX_TASKS_PER_CHILD": "worker_max_tasks_per_child",
    "CELERYD_POOL": "worker_pool",
    "CELERYD_POOL_PUTLOCKS": "worker_pool_putlocks",
    "CELERYD_POOL_RESTARTS": "worker_pool_restarts",
    "CELERYD_PREFETCH_MULTIPLIER": "worker_prefetch_multiplier",
    "CELERYD_PROC_ALIVE_TIMEOUT": "worker_proc_alive_timeout",
    "CELERY_REDIRECT_STDOUTS": "worker_redirect_stdouts",
    "CELERY_REDIRECT_STDOUTS_LEVEL": "worker_redirect_stdouts_level",
    "CELERY_SEND_EVENTS": "worker_send_task_events",
    "CELERYD_SOFT_SHUTDOWN_TIMEOUT": "worker_soft_shutdown_timeout",
    "CELERYD_STATE_DB": "worker_state_db",
    "CELERYD_TASK_LOG_FORMAT": "worker_task_log_format",
    "CELERYD_TIMER": "worker_timer",
    "CELERYD_TIMER_PRECISION": "worker_timer_precision",
}


def _build() -> dict[str, CelerySetting]:
    old_of = {new: old for old, new in OLD_NAMES.items()}
    rows = list(_TABLE)
    for backend, names in _BACKEND_FAMILIES.items():
        rows += [(name, Answer.REFUSED, None,
                  f"the {backend} result backend is Celery's; {_BACKENDS}") for name in names]
    rows += [(name, Answer.REFUSED, None,
              "give the whole Redis URL in result_backend "
              "(redis://:password@host:port/db)") for name in _REDIS_PARTS]
    rows += [(name, Answer.REFUSED, None,
              "Redis connection options go in the result_backend URL's query string "
              "(e.g. ?connection_timeout=5)") for name in _REDIS_OPTIONS]
    rows += [(name, Answer.REFUSED, None, _SECURITY_NOTES[name]) for name in _SECURITY]
    rows.append(("redis_backend_use_ssl", Answer.SAME, None,
                 "as broker_use_ssl, for a rediss:// result backend (docs/security.md)"))
    table: dict[str, CelerySetting] = {}
    for name, answer, target, note in rows:
        if name in table:
            raise AssertionError(f"{name} is in the Celery settings table twice")
        table[name] = CelerySetting(name, old_of.get(name, name.upper()), answer, target,
                                    note)
    return dict(sorted(table.items()))


CELERY_SETTINGS: dict[str, CelerySetting] = _build()
# Every old uppercase name, including those that are simply the new name in capitals.
OLD_TO_NEW: dict[str, str] = {setting.old: name for name, setting in CELERY_SETTINGS.items()
                              if setting.old is not None}
OLD_TO_NEW.update({"BROKER_URL": "broker_url"})


def refusal(name: str) -> str | None:
    """The error message for setting Celery's ``name``, or None when celeriac takes it."""
    setting = CELERY_SETTINGS.get(name)
    if setting is None or setting.answer is not Answer.REFUSED:
        return None
    return f'celeriac does not support the Celery setting "{name}": {setting.note}'


def markdown() -> str:
    """The table as docs/celery-settings.md shows it."""
    lines = [
        "# Celery settings in celeriac",
        "",
        "<!-- Generated from src/celeriac/celery_settings.py; do not edit by hand:",
        "     python -c 'from celeriac.celery_settings import markdown; "
        "print(markdown(), end=\"\")' > docs/celery-settings.md",
        "     tests/unit/test_celery_settings.py checks that it is up to date. -->",
        "",
        "Every setting of Celery 5.x has one answer in celeriac. **same**: celeriac has it,",
        "with Celery's meaning. **mapped**: celeriac does the job under another name, and",
        "the value is carried over. **refused**: setting it is an error whose message says",
        "why and what to use instead; nothing is silently ignored.",
        "",
        "Celery's old uppercase names (`BROKER_URL`, `CELERYD_PREFETCH_MULTIPLIER`) are",
        "read by `config_from_object` and `conf.update` with a deprecation warning, and",
        "`config_from_object(obj, namespace=\"CELERY\")` reads Django's `CELERY_BROKER_URL`",
        "style. The environment variables `CELERY_BROKER_URL` and `CELERY_RESULT_BACKEND`",
        "win over the configuration, as in Celery (`CELERIAC_BROKER_URL` and",
        "`CELERIAC_RESULT_BACKEND` win over them when both are set).",
        "",
        "| Celery setting | old name | in celeriac | notes |",
        "|---|---|---|---|",
    ]
    for name, setting in CELERY_SETTINGS.items():
        answer = setting.answer.value
        if setting.answer is Answer.MAPPED:
            answer = f"mapped to `{setting.target}`"
        old = f"`{setting.old}`" if setting.old else ""
        lines.append(f"| `{name}` | {old} | {answer} | {setting.note} |")
    return "\n".join(lines) + "\n"

