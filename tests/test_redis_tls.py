"""Redis over TLS with an ACL user (issue 17): a TLS-only `redis-server` (`--port 0`) with a CA,
server and client certificate made for the run; the hub, its reader and a RedisPublisher work
as an ACL user holding exactly the documented rule, and every way of getting it wrong (no
client certificate, an unknown CA, a certificate for another host, a missing command, another
key prefix, a bad password) fails with an error that says what is wrong."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import msgspec
import pytest

from hub.backends.base import PublishRequest
from hub.backends.redis import RedisBackend
from hub.backends.redis_options import HUB_COMMANDS, acl_rule, tls_options
from hub.backends.redis_scripts import HUB_SCRIPT
from hub.config import Settings
from hub.errors import BackendUnavailable
from hub.redis_publisher import RedisPublisher
from hub.wire.catalog import EventCatalog

from .redis_support import REPO, fast_settings, redis_server_binary
from .redis_tls_support import Certificates, TlsRedisServer, make_certificates
from .support import FrameRecorder, run_hub, wait_for

PREFIX = "tlshub"
PASSWORD = "p@ss:w0rd/with%signs"  # percent-encoded in the URL


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls-certs"))


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[TlsRedisServer]:
    """TLS only, client certificates required, the hub's ACL user set up as documented."""
    redis_server_binary()
    tls = TlsRedisServer(
        tmp_path_factory.mktemp("redis-tls"), certificates, client_certificates="yes"
    )
    tls.start()
    try:
        with tls.admin() as admin:
            admin.execute_command("ACL", "SETUSER", *acl_rule(PREFIX, "hub", PASSWORD).split()[1:])
        yield tls
    finally:
        tls.kill()


def tls_settings(
    url: str, certificates: Certificates, *, prefix: str = PREFIX, **overrides: object
) -> Settings:
    files: dict[str, object] = {
        "redis_key_prefix": prefix,
        "redis_tls_ca_file": str(certificates.ca),
        "redis_tls_cert_file": str(certificates.client_cert),
        "redis_tls_key_file": str(certificates.client_key),
    }
    return fast_settings(url, **{**files, **overrides})


def hub_url(server: TlsRedisServer, user: str = "hub", password: str = PASSWORD) -> str:
    return server.url(f"{user}:{quote(password, safe='')}")


def event(i: int, key: str | None = None) -> PublishRequest:
    return PublishRequest("ingest.job.updated", msgspec.Raw(b'{"i":%d}' % i), key)


async def all_closed(server: TlsRedisServer) -> None:
    """Wait until Redis holds no connection but the asking one: a connection redis-py drops
    after a refusal finishes its TLS close in the background, and must before the test's
    event loop ends."""

    def only_admin() -> bool:
        with server.admin(check_hostname=False) as admin:
            return len(admin.execute_command("CLIENT", "LIST").splitlines()) == 1

    await wait_for(only_admin, what="every hub connection to close")


async def publish_error(server: TlsRedisServer, url: str, settings: Settings) -> str:
    backend = RedisBackend(url, settings)
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await backend.publish("p1", [event(1)])
    finally:
        await backend.close()
        await all_closed(server)
    return caught.value.message


# --- the hub, fully, as the documented ACL user over TLS ------------------------------------


async def test_the_hub_works_over_tls_as_the_acl_user_with_the_documented_rule(
    server: TlsRedisServer, certificates: Certificates
) -> None:
    url = hub_url(server)
    settings = tls_settings(url, certificates)
    async with run_hub(settings, backend=RedisBackend(url, settings)) as running:
        live = await FrameRecorder.open(running.ws_url("p1"))
        await wait_for(lambda: live.welcome is not None, what="welcome")
        assert live.welcome is not None
        epoch = live.welcome["epoch"]
        async with running.http() as http:
            body = [{"type": "ingest.job.updated", "key": f"j{i % 2}", "data": {"i": i}}
                    for i in range(4)]  # fmt: skip
            response = await http.post("/v1/projects/p1/events", json=body)
            assert response.status_code == 202, response.text
            # a publisher in another process's shoes: its own TLS connection, same user
            catalog = EventCatalog(strict=False)
            async with RedisPublisher(url, settings, catalog=catalog) as publisher:
                assert await publisher.publish("p1", "ingest.job.updated", {"i": 4}) == 5
            await wait_for(lambda: live.seqs == [1, 2, 3, 4, 5], what="5 live events")
            # resume from seq 2 in this epoch: 3, 4, 5 replayed
            resumed = await FrameRecorder.open(running.ws_url("p1", since=2, epoch=epoch))
            await wait_for(lambda: bool(resumed.ops("replayed")), what="replay")
            assert resumed.seqs == [3, 4, 5]
            history = (await http.get("/v1/projects/p1/events", params={"since": 0})).json()
            assert [e["seq"] for e in history["events"]] == [1, 2, 3, 4, 5]
            snapshot = (await http.get("/v1/projects/p1/snapshot")).json()
            assert {e["key"]: e["seq"] for e in snapshot["events"]} == {"j0": 3, "j1": 4}
        await live.close()
        await resumed.close()
    with server.admin() as admin:
        keys = [k.decode() for k in admin.keys("*")]
        assert keys and all(k.startswith(f"{PREFIX}:") for k in keys), keys
        assert admin.execute_command("ACL", "LOG") == []  # nothing was ever refused


def test_the_documented_acl_rule_is_the_one_the_hub_needs() -> None:
    operations = (REPO / "docs" / "operations.md").read_text()
    assert acl_rule("hub", "hub", "<password>") in operations
    for command in HUB_COMMANDS:
        assert command in operations


def test_every_command_the_script_calls_is_in_the_rule() -> None:
    called = {c.lower() for c in re.findall(r"redis\.call\('(\w+)'", HUB_SCRIPT)}
    assert called and called <= set(HUB_COMMANDS), called - set(HUB_COMMANDS)


# --- ACL mistakes: a clear error, never a hang -------------------------------------------------


@pytest.mark.parametrize("missing", ["evalsha", "xadd", "hincrby", "xtrim"])
async def test_a_user_missing_a_command_the_hub_needs_is_told_which(
    server: TlsRedisServer, certificates: Certificates, missing: str
) -> None:
    user = f"no-{missing}"
    rule = acl_rule(PREFIX, user, PASSWORD).replace(f" +{missing}", "")
    with server.admin() as admin:
        admin.execute_command("ACL", "SETUSER", *rule.split()[1:])
    url = hub_url(server, user)
    settings = tls_settings(url, certificates, retention_events=1)  # the 2nd publish trims
    backend = RedisBackend(url, settings)
    try:
        with pytest.raises(BackendUnavailable) as refused:
            for i in range(2):
                await backend.publish(f"p-{missing}", [event(i)])
    finally:
        await backend.close()
        await all_closed(server)
    message = refused.value.message
    assert "ACL user" in message and f"'{missing}'" in message.lower(), message
    assert "docs/operations.md" in message


async def test_a_user_limited_to_another_prefix_is_refused_the_keys(
    server: TlsRedisServer, certificates: Certificates
) -> None:
    with server.admin() as admin:
        admin.execute_command("ACL", "SETUSER", *acl_rule("other", "other", PASSWORD).split()[1:])
    url = hub_url(server, "other")
    message = await publish_error(server, url, tls_settings(url, certificates))
    assert "ACL user" in message and "key" in message.lower(), message


async def test_a_wrong_password_says_the_credentials_were_refused(
    server: TlsRedisServer, certificates: Certificates
) -> None:
    url = hub_url(server, password="wrong")
    message = await publish_error(server, url, tls_settings(url, certificates))
    assert message.startswith("redis refused the credentials in the URL"), message
    assert "wrong" not in message  # the password is not echoed


# --- TLS mistakes --------------------------------------------------------------------------


async def test_without_a_client_certificate_a_server_that_wants_one_refuses(
    server: TlsRedisServer, certificates: Certificates
) -> None:
    url = hub_url(server)
    settings = tls_settings(url, certificates, redis_tls_cert_file="", redis_tls_key_file="")
    message = await publish_error(server, url, settings)
    assert message.startswith("redis unavailable"), message


async def test_a_server_certificate_from_another_ca_is_refused(
    server: TlsRedisServer, certificates: Certificates
) -> None:
    url = hub_url(server)
    settings = tls_settings(url, certificates, redis_tls_ca_file=str(certificates.other_ca))
    message = await publish_error(server, url, settings)
    assert "certificate verify failed" in message, message


async def test_the_host_may_be_any_name_the_certificate_carries(
    server: TlsRedisServer, certificates: Certificates
) -> None:
    # the server's certificate names 127.0.0.1 (every other test) and localhost (this one)
    url = server.url(f"hub:{quote(PASSWORD, safe='')}", host="localhost")
    backend = RedisBackend(url, tls_settings(url, certificates))
    try:
        assert await backend.publish("by-name", [event(1)]) == [1]
    finally:
        await backend.close()


async def test_a_certificate_for_another_host_is_refused_unless_the_check_is_off(
    tmp_path: Path,
) -> None:
    redis_server_binary()
    certificates = make_certificates(tmp_path / "certs", server_names=["redis.invalid"])
    tls = TlsRedisServer(tmp_path / "redis", certificates)
    tls.start()
    try:
        with tls.admin(check_hostname=False) as admin:
            admin.execute_command("ACL", "SETUSER", *acl_rule(PREFIX, "hub", PASSWORD).split()[1:])
        url = hub_url(tls)
        message = await publish_error(tls, url, tls_settings(url, certificates))
        assert "certificate verify failed" in message and "127.0.0.1" in message, message
        unchecked = tls_settings(url, certificates, redis_tls_check_hostname=False)
        backend = RedisBackend(url, unchecked)
        try:
            assert await backend.publish("p1", [event(1)]) == [1]
        finally:
            await backend.close()
    finally:
        tls.kill()


# --- settings ------------------------------------------------------------------------------


def test_tls_files_with_a_plain_url_are_refused(certificates: Certificates) -> None:
    settings = Settings(redis_tls_ca_file=str(certificates.ca))
    with pytest.raises(ValueError, match="not rediss://"):
        tls_options("redis://127.0.0.1:6379/0", settings)
    with pytest.raises(ValueError, match="not rediss://"):
        RedisBackend("redis://127.0.0.1:6379/0", settings)


def test_missing_files_and_a_key_without_its_certificate_are_refused(
    tmp_path: Path, certificates: Certificates
) -> None:
    url = "rediss://127.0.0.1:6379/0"
    with pytest.raises(ValueError, match="redis_tls_ca_file: no such file"):
        tls_options(url, Settings(redis_tls_ca_file=str(tmp_path / "nope.crt")))
    with pytest.raises(ValueError, match="needs redis_tls_cert_file"):
        tls_options(url, Settings(redis_tls_key_file=str(certificates.client_key)))


def test_tls_options_verify_the_server_and_default_to_the_system_cas(
    certificates: Certificates,
) -> None:
    url = "rediss://127.0.0.1:6379/0"
    assert tls_options(url, Settings()) == {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    assert tls_options("redis://127.0.0.1:6379/0", Settings()) == {}
    options = tls_options(url, Settings(redis_tls_cert_file=str(certificates.client_cert)))
    assert options["ssl_certfile"] == str(certificates.client_cert)
    assert options["ssl_keyfile"] is None  # the key is in the certificate file


def test_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {"HUB_REDIS_TLS_CA_FILE": "/etc/ca.pem", "HUB_REDIS_TLS_CHECK_HOSTNAME": "false"}
    )
    assert (settings.redis_tls_ca_file, settings.redis_tls_check_hostname) == (
        "/etc/ca.pem",
        False,
    )


def test_the_password_in_the_url_never_shows_in_the_settings_repr() -> None:
    shown = repr(Settings(backend="rediss://hub:s3cret%40x@redis.example:6380/0"))
    assert "s3cret" not in shown
    assert "rediss://hub:<redacted>@redis.example:6380/0" in shown
