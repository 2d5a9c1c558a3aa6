"""A settings object behind a module attribute, as django.conf:settings is."""

import types

settings = types.SimpleNamespace(CELERY_TASK_DEFAULT_QUEUE="from-attribute")
