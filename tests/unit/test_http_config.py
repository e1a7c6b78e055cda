"""The HTTP connection manager from Envoy YAML: what loads, and errors naming file and path."""

from __future__ import annotations

from pathlib import Path

import pytest

from pysidecar.config.envoy import load_file
from pysidecar.config.node import ConfigError
from pysidecar.model.http import HttpConnectionManager

SEED = Path(__file__).resolve().parents[1] / "conformance" / "scenarios" / "seed002.yaml"


def render(**overrides: str) -> str:
    text = SEED.read_text()
    for key in ("ADMIN_ADDR", "LISTEN_ADDR", "V1_ADDR", "V2_ADDR", "DEAD_ADDR", "LAB_ADDR"):
        text = text.replace("${" + key + "}", "127.0.0.1")
    for key in ("ADMIN_PORT", "LISTEN_PORT", "V1_PORT", "V2_PORT", "DEAD_PORT", "LAB_PORT"):
        text = text.replace("${" + key + "}", "1")
    for old, new in overrides.items():
        assert old in text
        text = text.replace(old, new)
    return text


def load(tmp_path: Path, text: str) -> HttpConnectionManager:
    p = tmp_path / "envoy.yaml"
    p.write_text(text)
    hcm = load_file(str(p)).listeners[0].filter_chains[0].filters[0]
    assert isinstance(hcm, HttpConnectionManager)
    return hcm


def error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert e.value.file.endswith("envoy.yaml")
    return e.value


def test_seed_loads(tmp_path: Path) -> None:
    hcm = load(tmp_path, render())
    rc = hcm.route_config
    assert hcm.stat_prefix == "ingress_http" and rc.name == "jtroute"
    assert [h.key for h in rc.mutations.response_headers_to_add] == ["myname", "age"]
    assert rc.virtual_hosts[0].routes[0].route is not None
    assert rc.virtual_hosts[0].routes[0].route.regex_rewrite is not None
    lua = hcm.http_filters[0].lua
    assert lua is not None and 'headers():add("location", "China")' in lua.code
    assert hcm.route_config.virtual_hosts[0].routes[1].route.timeout == 3.0  # type: ignore[union-attr]


def test_unknown_cluster_is_refused(tmp_path: Path) -> None:
    e = error(tmp_path, render(**{"route: {cluster: refused}": "route: {cluster: nosuch}"}))
    assert "nosuch" in e.message and "routes[2].route" in e.path


@pytest.mark.parametrize(
    ("bad", "words"), [("^/abc/(.*?$", "missing )"), ("^/abc/(?!x)(.*?)$", "invalid perl operator"), ("^/(abc)/\\\\1$", "invalid escape")]
)
def test_bad_regex(tmp_path: Path, bad: str, words: str) -> None:
    # Envoy's safe_regex is RE2: lookarounds and backreferences (fine in Python's re) are refused.
    e = error(tmp_path, render(**{'regex: "^/abc/(.*?)$"': f'regex: "{bad}"'}))
    assert e.path.endswith("regex_rewrite.pattern.regex") and words in e.message


def test_unknown_http_filter(tmp_path: Path) -> None:
    e = error(
        tmp_path,
        render(
            **{
                "envoy.extensions.filters.http.lua.v3.Lua": "envoy.extensions.filters.http.cors.v3.Cors"
            }
        ),
    )
    assert e.path.endswith("http_filters[0]") and "unsupported HTTP filter" in e.message


def test_router_must_be_last(tmp_path: Path) -> None:
    text = render()
    head, sep, tail = text.partition("          http_filters:\n")
    lua, _, router = tail.partition("          - name: envoy.filters.http.router\n")
    swapped = (
        head
        + sep
        + "          - name: envoy.filters.http.router\n"
        + router.split("  clusters:")[0]
        + lua
    )
    swapped += "  clusters:" + router.split("  clusters:", 1)[1]
    e = error(tmp_path, swapped)
    assert "last" in e.message


def test_lua_that_does_not_compile_is_refused_with_luajits_message(tmp_path: Path) -> None:
    e = error(tmp_path, render(**{'headers():add("location", "China")': 'headers():add("location", "China"'}))
    assert "Lua script does not compile" in e.message and "')' expected" in e.message
    assert e.path.endswith("typed_config.inline_code")


def test_unknown_field(tmp_path: Path) -> None:
    e = error(tmp_path, render(**{"codec_type: AUTO": "codec_typo: AUTO"}))
    assert e.path.endswith("typed_config.codec_typo")


def test_retry_on_checked(tmp_path: Path) -> None:
    e = error(
        tmp_path,
        render(
            **{
                "route: {cluster: refused}": "route: {cluster: refused, retry_policy: {retry_on: 5xx,bogus}}"
            }
        ),
    )
    assert "bogus" in e.message



@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("normalize_path", "true", "normalize_path: true is not supported"),
        ("merge_slashes", "true", "merge_slashes: true is not supported"),
        ("request_timeout", "5s", "request_timeout is not supported"),
    ],
)
def test_hcm_settings_we_would_not_honour_are_refused(tmp_path: Path, field: str, value: str, words: str) -> None:
    """A field that would change behaviour we do not implement is an error, not silence."""
    e = error(tmp_path, render(**{"codec_type: AUTO": f"codec_type: AUTO\n{_indent()}{field}: {value}"}))
    assert words in e.message
    assert e.path.endswith(f"typed_config.{field}")


def _indent() -> str:
    line = next(x for x in render().splitlines() if "codec_type: AUTO" in x)
    return line[: len(line) - len(line.lstrip())]


def test_max_headers_count_loads_and_defaults_to_envoys_100(tmp_path: Path) -> None:
    assert load(tmp_path, render()).max_headers_count == 100
    opts = "common_http_protocol_options: {max_headers_count: 7}"
    hcm = load(tmp_path, render(**{"codec_type: AUTO": f"codec_type: AUTO\n{_indent()}{opts}"}))
    assert hcm.max_headers_count == 7


@pytest.mark.parametrize(
    ("old", "new", "words", "path"),
    [
        ("route: {cluster: refused}", "route: {cluster: refused, retry_policy: {per_try_idle_timeout: 1s}}",
         "per_try_idle_timeout is not supported", "retry_policy.per_try_idle_timeout"),
        ("route: {cluster: refused}",
         "route: {cluster: refused, retry_policy: {retry_host_predicate: [{name: envoy.retry_host_predicates.omit_canary_hosts}]}}",
         "only the envoy.retry_host_predicates.previous_hosts", "retry_host_predicate[0]"),
        ("codec_type: AUTO", "codec_type: AUTO\n          drain_timeout: 9s", "drain_timeout", "typed_config.drain_timeout"),
    ],
)  # fmt: skip
def test_fields_we_do_not_implement_are_refused(tmp_path: Path, old: str, new: str, words: str, path: str) -> None:
    e = error(tmp_path, render(**{old: new}))
    assert words in e.message and e.path.endswith(path), (e.message, e.path)


def test_implemented_fields_load(tmp_path: Path) -> None:
    hcm = load(tmp_path, render())
    assert (hcm.stream_idle_timeout, hcm.accept_http_10, hcm.delayed_close_timeout) == (300.0, False, 1.0)
    assert hcm.headers_with_underscores_action == "ALLOW"
    text = render(**{
        "route: {cluster: refused}": "route: {cluster: refused, idle_timeout: 2s, retry_policy: {"
        "retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts}], host_selection_retry_max_attempts: 4}}",
        "codec_type: AUTO": "codec_type: AUTO\n          http_protocol_options: {accept_http_10: true}\n"
        "          common_http_protocol_options: {headers_with_underscores_action: DROP_HEADER}",
    })  # fmt: skip
    hcm = load(tmp_path, text)
    action = hcm.route_config.virtual_hosts[0].routes[2].route
    assert action is not None and action.idle_timeout == 2.0 and action.retry_policy is not None
    assert (action.retry_policy.previous_hosts, action.retry_policy.host_selection_max_attempts) == (True, 4)
    assert hcm.accept_http_10 and hcm.headers_with_underscores_action == "DROP_HEADER"
