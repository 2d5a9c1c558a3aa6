"""What the logs show of a webhook URL: never the secret a chat webhook carries in its
path or query."""

from __future__ import annotations

from celeriac.monitor.webhooks import shown


def test_a_webhook_url_is_shown_without_its_path_or_query() -> None:
    assert shown("https://hooks.slack.com/services/T000/B000/XXXXSECRET") \
        == "https://hooks.slack.com/..."
    assert shown("http://user:pw@127.0.0.1:8080/alerts?token=abc") == "http://127.0.0.1:8080/..."
    assert shown("http://[::1]:9000") == "http://[::1]:9000"


def test_the_settings_table_does_not_show_a_webhook_secret() -> None:
    from celeriac import App

    app = App("t", broker="memory://",
              alert_webhooks=["https://hooks.slack.com/services/T0/B0/SECRET"])
    assert app.conf.table()["alert_webhooks"] == ("https://hooks.slack.com/...",)
    assert "SECRET" not in app.conf.humanize()
