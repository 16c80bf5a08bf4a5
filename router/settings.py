"""One settings object (ROUTER_* environment variables and a `.env` file): the single source of
defaults. Command-line options override it; the README's settings table is checked against it."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from dotenv import dotenv_values
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SECRET_PREFIX = "ROUTER_SECRET_"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MIN_CONSOLE_TOKEN = 16  # characters: a console token opens replay to whoever holds it


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ROUTER_", env_file=".env", extra="ignore", validate_default=True
    )

    rules_dir: str = Field("rules", description="Directory of rule files (*.toml).")
    store_url: str = Field(
        "sqlite:///router.db",
        description="Where jobs are kept: sqlite:///PATH or postgresql://USER@HOST/DB.",
    )
    host: str = Field("127.0.0.1", description="Address the intake listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port the intake listens on.")
    worker_port: int = Field(
        8081, ge=0, le=65535, description="Health and metrics port of `router worker` (0: none)."
    )
    ops_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of /healthz, /readyz and /metrics of `router serve`; the intake's port "
        "then answers the webhook and the console only (0: all on the intake's port).",
    )
    drain_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a stopping process gives the requests and deliveries in flight; "
        "keep the container's stop timeout above it.",
    )
    webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Accepted shared secrets, comma-separated (several at once for rotation).",
    )
    webhook_secret_header: str = Field(
        "X-Authorization", description="Request header that carries the shared secret."
    )
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest accepted body.")
    max_records: int = Field(
        10_000, ge=1, description="Most records one push may hold (a BULK push's items)."
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a request's headers may take to arrive, from its first byte (or "
        "from the connection opening).",
    )
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a request's body may take to arrive, after its headers."
    )
    keepalive_timeout: float = Field(
        5.0, gt=0, description="Seconds an idle keep-alive connection is kept open."
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="Most connections open at once (lowered to fit the file-descriptor limit).",
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="Largest accepted request header block, in bytes."
    )
    dedupe_window: float = Field(
        86400.0, ge=0, description="Seconds a repeated push is recognised as a duplicate (0: off)."
    )
    concurrency: int = Field(64, ge=1, description="Deliveries in flight at once, per worker.")
    per_host_concurrency: int = Field(
        8, ge=1, description="Deliveries in flight at once to one destination host."
    )
    retry_max_attempts: int = Field(
        0,
        ge=0,
        le=10_000,
        description="Attempts before a job is dead; 0: no limit, the max age alone decides.",
    )
    retry_max_age: float = Field(
        86400.0, gt=0, description="Seconds after acceptance when a job stops being retried."
    )
    retry_base_delay: float = Field(1.0, gt=0, description="First backoff step, in seconds.")
    retry_max_delay: float = Field(3600.0, gt=0, description="Longest backoff, in seconds.")
    retry_after_cap: float = Field(
        3600.0, gt=0, description="Longest Retry-After honoured, in seconds."
    )
    lease_seconds: float = Field(
        60.0, gt=0, description="How long a claimed job is reserved before another worker may."
    )
    circuit_failures: int = Field(
        5,
        ge=0,
        description="Failures in a row that open a destination's circuit (0: never open one).",
    )
    circuit_probe_delay: float = Field(
        10.0, gt=0, description="Seconds from a circuit opening to its first probe."
    )
    circuit_probe_max_delay: float = Field(
        600.0, gt=0, description="Longest interval between two probes of an open circuit."
    )
    retention: float = Field(
        7 * 86400.0, gt=0, description="Seconds done jobs and event records are kept."
    )
    reload: bool = Field(True, description="Watch the rules directory and reload on change.")
    template_timeout: float = Field(
        1.0,
        gt=0,
        description="Seconds of CPU time the templates of one action may take to render; a "
        "job over it is dead.",
    )
    template_max_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest rendered value (a body, a header...) and largest text or list a "
        "template may build, in bytes; a job over it is dead.",
    )
    smtp_host: str = Field("localhost", description="SMTP server for e-mail actions.")
    smtp_port: int = Field(25, ge=1, le=65535, description="SMTP port.")
    smtp_username: str | None = Field(None, description="SMTP user (no login when unset).")
    smtp_password: SecretStr | None = Field(None, description="SMTP password.")
    smtp_tls: Literal["none", "starttls", "tls"] = Field(
        "none", description="SMTP transport security: none, starttls or tls."
    )
    smtp_timeout: float = Field(30.0, gt=0, description="SMTP connect and command timeout.")
    email_from: str = Field("router@localhost", description="Default From address of e-mails.")
    public_url: str | None = Field(
        None,
        description="The router's public HTTPS base URL; `router actito apply` points ACTITO's "
        "webhook subscriptions at its /webhooks/actito.",
    )
    actito_api_key: SecretStr | None = Field(
        None, description="ACTITO API key (for enrichment, write-back and subscriptions)."
    )
    actito_entity: str | None = Field(None, description="ACTITO entity the API calls act on.")
    actito_api_url: str = Field(
        "https://api.actito.com",
        description="ACTITO API base of your licence's region (api, api1, api3 or api-pre1 "
        ".actito.com), under which /auth/token and /v4/ live.",
    )
    actito_calls_per_minute: int = Field(
        100, ge=1, description="ACTITO API calls per minute, per process (calls are spaced out)."
    )
    actito_max_concurrent: int = Field(
        5, ge=1, description="ACTITO API calls in flight at once, per process."
    )
    actito_timeout: float = Field(30.0, gt=0, description="Seconds one ACTITO API call may take.")
    actito_profile_cache_seconds: float = Field(
        30.0, ge=0, description="Seconds a fetched profile is reused for enrichment (0: no reuse)."
    )
    actito_profile_tables: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Profile table names to use in API paths instead of the push's tableId, "
        "as ID=NAME, comma-separated (unset: the tableId).",
    )
    actito_push_type: Literal["ONE_BY_ONE", "BULK"] = Field(
        "ONE_BY_ONE", description="How the subscriptions `router actito apply` writes push events."
    )
    alert_interval: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="Seconds between two checks of the [[alert]] tables (a signal, such as a "
        "refused reload, checks them at once).",
    )
    console_url: str | None = Field(
        None,
        description="Base URL of the router's console (its /console address as users reach "
        "it, e.g. https://router.example.com/console); alerts link to what they are about "
        "under it.",
    )
    console_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Tokens of the web console (/console) and its API (/api/v1), comma-separated "
        "(several at once for rotation); unset: no console. Never a webhook secret.",
    )
    console_viewer_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Read-only console tokens, comma-separated: they see everything and "
        "change nothing (no replay).",
    )
    console_secure_cookie: bool = Field(
        False,
        description="Mark the console's session cookie Secure even when a request arrives over "
        "plain HTTP (behind a proxy that ends TLS); it is whenever the request came over HTTPS.",
    )
    console_session_hours: float = Field(
        12.0, gt=0, le=720, description="Hours a console login lasts."
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="auto: JSON lines unless stdout is a terminal."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level logged."
    )

    @field_validator("webhook_secrets", "console_tokens", "console_viewer_tokens", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("actito_profile_tables", mode="before")
    @classmethod
    def _split_tables(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("actito_profile_tables")
    @classmethod
    def _check_tables(cls, value: list[str]) -> list[str]:
        for item in value:
            table_id, _, name = item.partition("=")
            if not table_id.strip() or not name.strip():
                raise ValueError(f"'{item}' is not ID=NAME (e.g. 16=Customers)")
        return value

    @field_validator("actito_api_url")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (e.g. https://api.actito.com)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_console_tokens(self) -> Settings:
        webhook = {secret.get_secret_value() for secret in self.webhook_secrets}
        console = [
            t.get_secret_value() for t in (*self.console_tokens, *self.console_viewer_tokens)
        ]
        if webhook.intersection(console):
            raise ValueError(
                "a console token is also a webhook secret; give the console tokens of its own "
                "(ROUTER_CONSOLE_TOKENS, ROUTER_CONSOLE_VIEWER_TOKENS)"
            )
        short = [t for t in console if len(t) < MIN_CONSOLE_TOKEN]
        if short:
            raise ValueError(
                f"console tokens must be at least {MIN_CONSOLE_TOKEN} characters long; make "
                "them with e.g. `openssl rand -hex 24`"
            )
        return self

    @property
    def loopback_only(self) -> bool:
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")


def secret_values(env_file: str | None = ".env") -> dict[str, str]:
    """Template secrets: ROUTER_SECRET_<NAME> from the environment (and `.env`), by NAME.
    Nothing else of the environment is exposed to templates."""
    values: dict[str, str] = {}
    if env_file and os.path.exists(env_file):
        for key, value in dotenv_values(env_file).items():
            if key.startswith(SECRET_PREFIX) and value is not None:
                values[key[len(SECRET_PREFIX) :]] = value
    for key, value in os.environ.items():
        if key.startswith(SECRET_PREFIX):
            values[key[len(SECRET_PREFIX) :]] = value
    return values
