"""Tests for foreman.config: environment and flags in, a frozen Config or one-line error out."""

import argparse
import dataclasses
import hashlib
import os
import re

import pytest

from foreman import config
from foreman.clients import Client, token_hash_name
from foreman.config import Config, ConfigError, load, parse_duration, parse_listen

ALL_VARIABLES = [
    "FOREMAN_OLLAMA_URL",
    "FOREMAN_OLLAMA_TOKEN",
    "FOREMAN_POLL_INTERVAL",
    "FOREMAN_LISTEN",
    "FOREMAN_TOKENS",
    "FOREMAN_TOKENS_FILE",
    "FOREMAN_LOG_FORMAT",
    "FOREMAN_LOG_LEVEL",
    "FOREMAN_SHUTDOWN_GRACE",
    "FOREMAN_CONCURRENCY",
    "FOREMAN_MAX_QUEUE",
    "FOREMAN_MAX_QUEUE_PER_CLIENT",
    "FOREMAN_QUEUE_TIMEOUT",
    "FOREMAN_MODEL_AFFINITY",
    "FOREMAN_ADMIN_TOKENS",
    "FOREMAN_ADMIN_TOKENS_FILE",
    "FOREMAN_METRICS_PUBLIC",
    "FOREMAN_MAX_BODY",
    "FOREMAN_CLIENT_TIMEOUT",
    "FOREMAN_TARGET_IDLE_TIMEOUT",
    "FOREMAN_MAX_BODY_MEMORY",
    "FOREMAN_WAKE_MAC",
    "FOREMAN_WAKE_ADDRESS",
    "FOREMAN_TARGETS_FILE",
]


def parser():
    p = argparse.ArgumentParser(prog="foreman")
    config.add_arguments(p)
    return p


def flags(*argv):
    return parser().parse_args(list(argv))


def error_for(environ, args=None):
    with pytest.raises(ConfigError) as info:
        load(environ, args)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    return message


# --- defaults and plain values ----------------------------------------------


def test_defaults():
    c = load({})
    assert c == Config()
    assert c.ollama_url == "http://127.0.0.1:11434"
    assert c.ollama_token is None
    assert c.poll_interval == 30.0
    assert (c.listen_host, c.listen_port) == ("", 8080)
    assert c.tokens == ()
    assert c.tokens_file is None
    assert c.log_format == "text"
    assert c.log_level == "info"
    assert c.shutdown_grace == 30.0
    assert c.auth_enabled is False
    assert c.target_display == "http://127.0.0.1:11434"


def test_empty_variables_mean_default():
    assert load({name: "" for name in ALL_VARIABLES}) == load({})


def test_unrelated_environment_is_ignored():
    assert load({"PATH": "/bin", "FOREMAN_UNKNOWN": "x"}) == load({})


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load({}).listen_port = 1  # type: ignore[misc]


def test_every_variable_parsed(tmp_path):
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("from-file\n")
    c = load(
        {
            "FOREMAN_OLLAMA_URL": "https://mac.lan:11434/ollama/",
            "FOREMAN_OLLAMA_TOKEN": "up-stream",
            "FOREMAN_POLL_INTERVAL": "1m30s",
            "FOREMAN_LISTEN": "127.0.0.1:9000",
            "FOREMAN_TOKENS": "a, b",
            "FOREMAN_TOKENS_FILE": str(tokens_file),
            "FOREMAN_LOG_FORMAT": "JSON",
            "FOREMAN_LOG_LEVEL": "Debug",
            "FOREMAN_SHUTDOWN_GRACE": "0",
        }
    )
    assert c == Config(
        ollama_url="https://mac.lan:11434/ollama",
        ollama_token="up-stream",
        poll_interval=90.0,
        listen_host="127.0.0.1",
        listen_port=9000,
        tokens=("a", "b", "from-file"),
        tokens_file=str(tokens_file),
        log_format="json",
        log_level="debug",
        shutdown_grace=0.0,
    )
    assert c.auth_enabled


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error", "WARNING"])
def test_log_levels(level):
    assert load({"FOREMAN_LOG_LEVEL": level}).log_level == level.lower()


@pytest.mark.parametrize("fmt", ["text", "json", "Text", " json "])
def test_log_formats(fmt):
    assert load({"FOREMAN_LOG_FORMAT": fmt}).log_format == fmt.strip().lower()


# --- flags --------------------------------------------------------------------


def test_flags_override_environment():
    environ = {
        "FOREMAN_OLLAMA_URL": "http://env:1",
        "FOREMAN_POLL_INTERVAL": "10s",
        "FOREMAN_LISTEN": ":1111",
        "FOREMAN_LOG_LEVEL": "error",
        "FOREMAN_TOKENS": "env-token",
    }
    args = flags(
        "--ollama-url", "http://flag:2",
        "--poll-interval", "500ms",
        "--listen", "[::1]:2222",
        "--log-level", "debug",
        "--tokens", "flag-token",
        "--shutdown-grace", "5s",
    )
    c = load(environ, args)
    assert c.ollama_url == "http://flag:2"
    assert c.poll_interval == 0.5
    assert (c.listen_host, c.listen_port) == ("::1", 2222)
    assert c.log_level == "debug"
    assert c.tokens == ("flag-token",)
    assert c.shutdown_grace == 5.0


def test_flags_not_given_fall_back_to_environment():
    c = load({"FOREMAN_LISTEN": ":1234", "FOREMAN_LOG_FORMAT": "json"}, flags())
    assert (c.listen_port, c.log_format) == (1234, "json")


def test_empty_flag_turns_off_tokens_from_environment():
    c = load({"FOREMAN_TOKENS": "env-token", "FOREMAN_OLLAMA_TOKEN": "t"}, flags("--tokens", "", "--ollama-token", ""))
    assert c.tokens == ()
    assert c.ollama_token is None


def test_namespace_without_our_fields_is_fine():
    assert load({}, argparse.Namespace(command="serve")) == load({})


def test_error_from_a_flag_names_the_flag_and_variable():
    message = error_for({"FOREMAN_POLL_INTERVAL": "30s"}, flags("--poll-interval", "soon"))
    assert message.startswith("--poll-interval (FOREMAN_POLL_INTERVAL)='soon' is not a duration")


def test_help_documents_every_variable():
    text = parser().format_help()
    # argparse wraps lines; compare on collapsed whitespace.
    flat = " ".join(text.split())
    for name in ALL_VARIABLES:
        assert f"env {name}," in flat, name
    for setting in config.SETTINGS:
        # argparse may also break a line after a hyphen: compare without any whitespace.
        paragraph = "".join(f"{setting.flag} {setting.metavar} {setting.help}".split())
        assert paragraph in "".join(flat.split()), setting.flag
        if setting.default is None:
            assert f"(env {setting.env}, unset by default)" in flat
        else:
            assert f"(env {setting.env}, default {setting.default})" in flat


def test_settings_cover_the_spec_table_in_order():
    assert [s.env for s in config.SETTINGS] == ALL_VARIABLES
    for s in config.SETTINGS:
        assert s.flag == "--" + s.env.removeprefix("FOREMAN_").lower().replace("_", "-")
        assert set(s.fills) <= {f.name for f in dataclasses.fields(Config)}


def test_setting_defaults_are_what_load_uses():
    # The text shown in --help must parse to the same Config as no settings at all.
    environ = {s.env: s.default for s in config.SETTINGS if s.default is not None}
    assert load(environ) == load({}) == Config()


# --- one declaration per setting ---------------------------------------------------
#
# Each setting is declared once, as a field of Config; these check that every
# thing derived from the declarations (loading, --help, the repr) covers every
# declared setting, so a new one needs nothing but its declaration.

MARK = "Sekr1t"


def owner_of(field_name):
    """The setting declared on a Config field (None for a field only filled by another)."""
    return next((s for s in config.SETTINGS if s.fills[0] == field_name), None)


def test_every_config_field_is_filled_by_a_declared_setting():
    fields = [f.name for f in dataclasses.fields(Config)]
    filled = [name for s in config.SETTINGS for name in s.fills]
    assert set(filled) == set(fields)
    # Declaration order is field order (and the order errors are reported in).
    assert [s.fills[0] for s in config.SETTINGS] == [name for name in fields if owner_of(name)]


@pytest.mark.parametrize("setting", config.SETTINGS, ids=lambda s: s.env)
def test_settings_named_like_secrets_are_declared_secret(setting):
    # A path to a file of tokens is not itself a secret; the tokens are.
    if re.search(r"token|password|secret|credential|key", setting.name) and not setting.name.endswith("_file"):
        assert setting.secret, f"{setting.env} looks secret but has no redact="


def secret_shapes(tmp_path):
    """Values that carry MARK as a secret, in the shapes secret settings take."""
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"{MARK}-in-a-file\n")
    return [f"{MARK}-one", f"{MARK}-one,{MARK}-two", f"http://user:{MARK}@127.0.0.1:11434", str(tokens_file)]


def test_repr_shows_no_secret_of_any_setting_declared_secret(tmp_path):
    # Every setting that puts a value into a field declared secret: directly
    # (FOREMAN_TOKENS) or by joining it (FOREMAN_TOKENS_FILE).
    feeding = [s for s in config.SETTINGS if any((owner_of(f) or s).secret for f in s.fills)]
    assert feeding, "no setting is declared secret"
    environ = {}
    for setting in feeding:
        for text in secret_shapes(tmp_path):
            try:
                loaded = load({setting.env: text})
            except ConfigError:
                continue
            if any(MARK in str(getattr(loaded, f)) for f in setting.fills):
                environ[setting.env] = text
                break
        else:
            pytest.fail(f"no value in secret_shapes() fits {setting.env}: add one")
        assert MARK not in repr(loaded), repr(loaded)
    everything = load(environ)
    assert MARK in str(dataclasses.astuple(everything))
    assert MARK not in repr(everything), repr(everything)


def test_a_new_setting_needs_only_its_declaration():
    from dataclasses import dataclass

    from foreman.config import declare, readers

    @dataclass(frozen=True, repr=False)
    @declare.declared_settings
    class Toy:
        colour: str = declare.setting(
            default="red", read=readers.choice({"red": "red", "blue": "blue"}, "a colour"),
            metavar="COLOUR", help="What colour it is.",
        )
        pin_code: str | None = declare.setting(
            default=None, read=readers.bearer_token, metavar="PIN", redact=declare.hidden, help="The PIN.",
        )

        def __repr__(self) -> str:
            return declare.redacted_repr(self)

    assert Toy() == declare.load_settings(Toy, {}) == Toy(colour="red", pin_code=None)
    assert [s.env for s in declare.settings_of(Toy)] == ["FOREMAN_COLOUR", "FOREMAN_PIN_CODE"]
    p = argparse.ArgumentParser()
    declare.add_setting_arguments(p, declare.settings_of(Toy))
    flat = " ".join(p.format_help().split())
    assert "--colour COLOUR What colour it is. (env FOREMAN_COLOUR, default red)" in flat
    assert "--pin-code PIN The PIN. (env FOREMAN_PIN_CODE, unset by default)" in flat
    toy = declare.load_settings(Toy, {"FOREMAN_PIN_CODE": "1234"}, p.parse_args(["--colour", "BLUE"]))
    assert toy == Toy(colour="blue", pin_code="1234")
    assert repr(toy) == "Toy(colour='blue', pin_code=<hidden>)"
    with pytest.raises(ConfigError, match=r"^FOREMAN_COLOUR='green' is not a colour; use red or blue$"):
        declare.load_settings(Toy, {"FOREMAN_COLOUR": "green"})


def test_a_field_without_a_declaration_is_refused_at_import():
    from foreman.config import declare, readers

    with pytest.raises(TypeError, match="Bad.plain is not declared"):

        @declare.declared_settings
        class Bad:
            plain: int = 3

    with pytest.raises(TypeError, match="no setting 'nowhere' fills it"):

        @declare.declared_settings
        class Orphan:
            port: int = declare.filled_by("nowhere")

    with pytest.raises(TypeError, match="filled by secret 'pair' but not redacted"):

        @declare.declared_settings
        class Leaky:
            first: str | None = declare.setting(
                default=None, read=lambda text, label: (text, text), help="", redact=declare.hidden,
                fills=("first", "second"), name="pair",
            )
            second: str = declare.filled_by("pair")


# --- durations ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30", 30.0),
        ("0.5", 0.5),
        ("0", 0.0),
        (".5", 0.5),
        ("30s", 30.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("2h45m", 9900.0),
        ("1h1m1s", 3661.0),
        ("250us", 250e-6),
        ("250\u00b5s", 250e-6),
        ("250\u03bcs", 250e-6),
        ("100ns", 100e-9),
        ("1m0.5s", 60.5),
        ("0s", 0.0),
        (" 30s ", 30.0),
    ],
)
def test_valid_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "  ",
        "-1",
        "-5s",
        "+5s",
        "inf",
        "nan",
        "infs",
        "1m30",
        "30 s",
        "1 m",
        "s",
        "5d",
        "5S",
        "1e3",
        "1,5s",
        "soon",
        "30sec",
        "1." + "0" * 400 + "e400",
        "9" * 400 + "h",
    ],
)
def test_invalid_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_poll_interval_must_be_positive():
    message = error_for({"FOREMAN_POLL_INTERVAL": "0s"})
    assert message.startswith("FOREMAN_POLL_INTERVAL='0s' ")
    assert "greater than zero" in message


def test_shutdown_grace_may_be_zero():
    assert load({"FOREMAN_SHUTDOWN_GRACE": "0s"}).shutdown_grace == 0.0


def test_bad_duration_message():
    assert error_for({"FOREMAN_POLL_INTERVAL": "soon"}) == (
        "FOREMAN_POLL_INTERVAL='soon' is not a duration; "
        "use e.g. 500ms, 30s, 1m30s or bare seconds like 30"
    )


# --- listen ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (":8080", ("", 8080)),
        (":0", ("", 0)),
        (":65535", ("", 65535)),
        ("127.0.0.1:9000", ("127.0.0.1", 9000)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("localhost:8080", ("localhost", 8080)),
        ("my-host.lan:8080", ("my-host.lan", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:8080", ("::", 8080)),
        ("[fe80::1%eth0]:8080", ("fe80::1%eth0", 8080)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443)),
    ],
)
def test_valid_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "8080",
        ":",
        "host:",
        ":65536",
        ":99999",
        ":-1",
        ":http",
        ":80a",
        "::1:8080",
        "[::1]",
        "[nonsense]:80",
        "[]:80",
        "[::1:80",
        "a b:80",
        "*:80",
        "http://host:80",
        ": 80",
    ],
)
def test_invalid_listen(text):
    with pytest.raises(ValueError):
        parse_listen(text)


def test_bad_listen_message():
    assert error_for({"FOREMAN_LISTEN": ":99999"}) == (
        "FOREMAN_LISTEN=':99999' is not a valid listen address; "
        "use host:port or :port with a port from 0 to 65535"
    )


# --- target URL ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("http://127.0.0.1:11434/", "http://127.0.0.1:11434"),
        ("HTTPS://ollama.example.com", "https://ollama.example.com"),
        ("https://gw.lan/ollama/", "https://gw.lan/ollama"),
        ("https://gw.lan/a/b//", "https://gw.lan/a/b"),
        ("http://[::1]:11434", "http://[::1]:11434"),
        ("http://user:pw@mac.lan:11434/", "http://user:pw@mac.lan:11434"),
    ],
)
def test_valid_urls(text, expected):
    assert load({"FOREMAN_OLLAMA_URL": text}).ollama_url == expected


@pytest.mark.parametrize(
    "text",
    [
        "ftp://host",
        "mac.lan:11434",
        "127.0.0.1:11434",
        "http://",
        "http:///path",
        "http://:11434",
        "http://host:99999",
        "http://host:port",
        "http://host:0",
        "http://host:",
        "http://[::1",
        "http://host/api?x=1",
        "http://host/#frag",
        "http://host?",
        "http://ho st",
        " ",
    ],
)
def test_invalid_urls(text):
    message = error_for({"FOREMAN_OLLAMA_URL": text})
    assert message.startswith(f"FOREMAN_OLLAMA_URL={text.strip()!r} ")
    assert "http" in message.split(";", 1)[1]


def test_target_display_strips_credentials():
    c = load({"FOREMAN_OLLAMA_URL": "https://user:s3cret@mac.lan:11434/prefix/"})
    assert c.ollama_url == "https://user:s3cret@mac.lan:11434/prefix"
    assert c.target_display == "https://mac.lan:11434/prefix"
    assert "s3cret" not in repr(c)


def test_bad_url_message_hides_password():
    message = error_for({"FOREMAN_OLLAMA_URL": "ftp://user:s3cret@host"})
    assert "s3cret" not in message
    assert "'ftp://host'" in message


# --- tokens -----------------------------------------------------------------------


def test_tokens_from_environment_are_split_and_stripped():
    c = load({"FOREMAN_TOKENS": " a ,b,, c,a ,"})
    assert c.tokens == ("a", "b", "c")


def test_tokens_from_file_and_environment_are_combined_and_deduplicated(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text("# clients\n\n  b  \nd\n# a retired one\n#old\nc\nd\r\n")
    c = load({"FOREMAN_TOKENS": "a,b,c", "FOREMAN_TOKENS_FILE": str(path)})
    assert c.tokens == ("a", "b", "c", "d")
    assert c.tokens_file == str(path)
    assert c.auth_enabled


def test_tokens_file_alone(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("\ufeffonly\n")
    assert load({"FOREMAN_TOKENS_FILE": str(path)}).tokens == ("only",)


def test_tokens_file_flag(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("from-flag\n")
    c = load({"FOREMAN_TOKENS_FILE": "/nonexistent"}, flags("--tokens-file", str(path)))
    assert c.tokens == ("from-flag",)


def test_missing_tokens_file_names_variable_and_reason(tmp_path):
    path = tmp_path / "absent"
    message = error_for({"FOREMAN_TOKENS_FILE": str(path)})
    assert message.startswith(f"FOREMAN_TOKENS_FILE={str(path)!r} ")
    assert os.strerror(2) in message  # "No such file or directory"


def test_directory_as_tokens_file(tmp_path):
    message = error_for({"FOREMAN_TOKENS_FILE": str(tmp_path)})
    assert message.startswith("FOREMAN_TOKENS_FILE=")
    assert "cannot be read" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_tokens_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("secret\n")
    path.chmod(0)
    message = error_for({"FOREMAN_TOKENS_FILE": str(path)})
    assert message.startswith(f"FOREMAN_TOKENS_FILE={str(path)!r} ")
    assert os.strerror(13) in message  # "Permission denied"


def test_empty_tokens_file_fails_closed(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# nobody yet\n\n")
    message = error_for({"FOREMAN_TOKENS_FILE": str(path)})
    assert "holds no tokens" in message


def test_tokens_of_only_commas_fail_closed():
    assert "holds no tokens" in error_for({"FOREMAN_TOKENS": " , ,"})


SECRET = "hunter2-top"


@pytest.mark.parametrize(
    "environ",
    [
        {"FOREMAN_TOKENS": f"ok,{SECRET} more"},
        {"FOREMAN_TOKENS": f"{SECRET}\tx"},
        {"FOREMAN_TOKENS": f"{SECRET}\u00e9"},
        {"FOREMAN_OLLAMA_TOKEN": f"Bearer {SECRET}"},
        {"FOREMAN_OLLAMA_TOKEN": f"{SECRET}\nInjected: header"},
    ],
)
def test_token_values_never_appear_in_errors(environ):
    message = error_for(environ)
    variable = next(iter(environ))
    assert message.startswith(variable)
    assert "hidden" in message
    assert "hunter2" not in message


def test_token_in_file_with_whitespace_is_an_error_without_the_value(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"good\n{SECRET} # trailing comment\n")
    message = error_for({"FOREMAN_TOKENS_FILE": str(path)})
    assert "line 2" in message
    assert "hunter2" not in message


# --- tokens files: name= and weight= ------------------------------------------------


def tokens_file_with(tmp_path, text, name="tokens"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_tokens_file_lines_name_and_weigh_their_tokens(tmp_path):
    path = tokens_file_with(
        tmp_path,
        "# team\nalice-token name=alice weight=2\n  bob-token\tname=Bob.k_9-x  \n"
        "carol-token weight=0.5\nbare-token\nalice-token\nmax-token name=m weight=1000\n",
    )
    c = load({"FOREMAN_TOKENS": "env-token", "FOREMAN_TOKENS_FILE": str(path)})
    assert c.tokens == ("env-token", "alice-token", "bob-token", "carol-token", "bare-token", "max-token")
    assert c.token_clients == {
        "alice-token": Client("alice", 2.0),
        "bob-token": Client("Bob.k_9-x", 1.0),
        # Weighted but not named: named by the hash, like a bare token.
        "carol-token": Client(token_hash_name("carol-token"), 0.5),
        "max-token": Client("m", 1000.0),
    }
    # Bare tokens are named by the same short hash as before names existed.
    assert token_hash_name("bare-token") == "token:" + hashlib.sha256(b"bare-token").hexdigest()[:12]
    # The names are in the repr; the tokens are not.
    assert "alice" in repr(c) and "-token" not in repr(c), repr(c)


def test_a_name_may_be_64_characters_and_a_weight_a_plain_decimal(tmp_path):
    path = tokens_file_with(tmp_path, f"t1 name={'n' * 64}\nt2 weight=.25\nt3 weight=3.\nt4 weight=007\n")
    clients = load({"FOREMAN_TOKENS_FILE": str(path)}).token_clients
    assert clients["t1"].name == "n" * 64
    assert [clients[t].weight for t in ("t2", "t3", "t4")] == [0.25, 3.0, 7.0]


def test_admin_tokens_file_lines_name_their_tokens_too(tmp_path):
    clients = tokens_file_with(tmp_path, "client-token name=alice\nboth-token\n")
    admins = tokens_file_with(tmp_path, "root-token name=root weight=3\nboth-token name=carol\n", "admins")
    c = load({"FOREMAN_TOKENS_FILE": str(clients), "FOREMAN_ADMIN_TOKENS_FILE": str(admins)})
    assert c.admin_tokens == ("root-token", "both-token")
    assert c.token_clients == {
        "client-token": Client("alice"),
        "root-token": Client("root", 3.0),
        # Bare in one file, named in the other: one client, with that name.
        "both-token": Client("carol"),
    }
    assert "root-token" not in repr(c) and "both-token" not in repr(c)


def test_a_token_in_both_files_with_the_same_fields_is_fine(tmp_path):
    clients = tokens_file_with(tmp_path, "both-token name=bo weight=2\n")
    admins = tokens_file_with(tmp_path, "both-token name=bo\nboth-token weight=2\n", "admins")
    c = load({"FOREMAN_TOKENS_FILE": str(clients), "FOREMAN_ADMIN_TOKENS_FILE": str(admins)})
    assert c.token_clients == {"both-token": Client("bo", 2.0)}


@pytest.mark.parametrize(
    "fields, complaint",
    [
        ("colour=red", "field 2 is not name= or weight="),
        ("name", "field 2 is not name= or weight="),
        ("=x", "field 2 is not name= or weight="),
        ("NAME=alice", "field 2 is not name= or weight="),
        ("name=al ice", "field 3 is not name= or weight="),
        ("# a comment after a token", "field 2 is not name= or weight="),
        ("name=alice name=alice", "name= is given twice"),
        ("weight=1 name=a weight=2", "weight= is given twice"),
        ("name=", "name= must be 1 to 64"),
        ("name=al:ice", "name= must be 1 to 64"),
        ("name=al/ice", "name= must be 1 to 64"),
        ("name=\u00e4lice", "name= must be 1 to 64"),
        ("name=" + "n" * 65, "name= must be 1 to 64"),
        ("name=anonymous", "is reserved"),
        ("weight=", "weight= must be a number greater than 0 and at most 1000"),
        ("weight=0", "weight= must be a number greater than 0"),
        ("weight=0.0", "weight= must be a number greater than 0"),
        ("weight=-1", "weight= must be a number greater than 0"),
        ("weight=two", "weight= must be a number greater than 0"),
        ("weight=inf", "weight= must be a number greater than 0"),
        ("weight=nan", "weight= must be a number greater than 0"),
        ("weight=1e3", "weight= must be a number greater than 0"),
        ("weight=1_0", "weight= must be a number greater than 0"),
        ("weight=1000.5", "weight= must be a number greater than 0 and at most 1000"),
        ("weight=\u0661", "weight= must be a number greater than 0"),  # an Arabic-Indic one
    ],
)
@pytest.mark.parametrize("variable", ["FOREMAN_TOKENS_FILE", "FOREMAN_ADMIN_TOKENS_FILE"])
def test_a_bad_field_is_an_error_naming_file_and_line_never_the_token(tmp_path, variable, fields, complaint):
    path = tokens_file_with(tmp_path, f"# first\ngood-one name=good\n{SECRET} {fields}\n")
    message = error_for({variable: str(path)})
    assert message.startswith(f"{variable}={str(path)!r} line 3 "), message
    assert complaint in message
    assert "hunter2" not in message


# (\x0b, \x0c and the like end a line, as they always have: not separators either.)
@pytest.mark.parametrize("separator", ["\u00a0", "\u2003", "\u3000", "\x1f"])
def test_only_spaces_and_tabs_separate_fields(tmp_path, separator):
    path = tokens_file_with(tmp_path, f"{SECRET}{separator}name=alice\n")
    message = error_for({"FOREMAN_TOKENS_FILE": str(path)})
    assert message.startswith(f"FOREMAN_TOKENS_FILE={str(path)!r} line 1 (value hidden)")
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "lines, line, complaint",
    [
        # A name belongs to one token.
        (f"other-token name=alice\n{SECRET} name=alice\n", 2, "name=alice is already the name of another token, on "),
        # A token has one name and one weight, however many lines it is on.
        (f"{SECRET} name=alice\n{SECRET} name=bob\n", 2, "the same token has another name on "),
        (f"{SECRET} weight=2\n{SECRET} name=al weight=3\n", 2, "the same token has another weight on "),
    ],
)
def test_lines_that_contradict_each_other_are_an_error(tmp_path, lines, line, complaint):
    path = tokens_file_with(tmp_path, lines)
    message = error_for({"FOREMAN_TOKENS_FILE": str(path)})
    assert message.startswith(f"FOREMAN_TOKENS_FILE={str(path)!r} line {line} ")
    assert complaint + f"FOREMAN_TOKENS_FILE={str(path)!r} line 1;" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "clients, admins, complaint",
    [
        ("one-token name=alice\n", f"{SECRET} name=alice\n", "name=alice is already the name of another token"),
        (f"{SECRET} name=alice\n", f"{SECRET} name=root\n", "the same token has another name"),
        (f"{SECRET} weight=1\n", f"{SECRET} weight=2\n", "the same token has another weight"),
    ],
)
def test_the_two_files_contradicting_each_other_is_an_error(tmp_path, clients, admins, complaint):
    client_file = tokens_file_with(tmp_path, clients)
    admin_file = tokens_file_with(tmp_path, admins, "admins")
    message = error_for({"FOREMAN_TOKENS_FILE": str(client_file), "FOREMAN_ADMIN_TOKENS_FILE": str(admin_file)})
    assert message.startswith(f"FOREMAN_ADMIN_TOKENS_FILE={str(admin_file)!r} line 1 ")
    assert complaint in message and f"FOREMAN_TOKENS_FILE={str(client_file)!r} line 1" in message
    assert "hunter2" not in message


def test_tokens_variables_stay_plain_lists(tmp_path):
    # FOREMAN_TOKENS takes no fields: a space is still an error, not a name.
    message = error_for({"FOREMAN_TOKENS": f"{SECRET} name=alice"})
    assert message.startswith("FOREMAN_TOKENS (value hidden)") and "hunter2" not in message
    assert load({"FOREMAN_TOKENS": "a,b"}).token_clients == {}


def test_ollama_token_is_stripped():
    assert load({"FOREMAN_OLLAMA_TOKEN": " abc.def \n"}).ollama_token == "abc.def"


def test_repr_hides_tokens():
    c = load({"FOREMAN_TOKENS": SECRET, "FOREMAN_OLLAMA_TOKEN": "upstream-secret"})
    assert "hunter2" not in repr(c)
    assert "upstream-secret" not in repr(c)


# --- every error: one line, names the variable and shows the value ----------------


@pytest.mark.parametrize(
    "variable, value",
    [
        ("FOREMAN_OLLAMA_URL", "gopher://x"),
        ("FOREMAN_POLL_INTERVAL", "soon"),
        ("FOREMAN_POLL_INTERVAL", "0"),
        ("FOREMAN_LISTEN", "nowhere"),
        ("FOREMAN_LOG_FORMAT", "xml"),
        ("FOREMAN_LOG_LEVEL", "verbose"),
        ("FOREMAN_SHUTDOWN_GRACE", "-1s"),
        ("FOREMAN_LISTEN", "bad\nline:80"),
        ("FOREMAN_LOG_LEVEL", " "),
    ],
)
def test_error_messages_are_one_line_with_variable_and_value(variable, value):
    message = error_for({variable: value})
    assert message.startswith(f"{variable}={value!r} ")
    # What is accepted follows the semicolon.
    assert re.search(r"; use ", message)


def test_first_bad_value_wins():
    message = error_for({"FOREMAN_LOG_LEVEL": "loud", "FOREMAN_LISTEN": "x"})
    assert message.startswith("FOREMAN_LISTEN=")


def test_queue_settings_defaults_and_values():
    defaults = load({})
    assert (defaults.concurrency, defaults.max_queue, defaults.queue_timeout) == (1, 128, 600.0)
    custom = load({"FOREMAN_CONCURRENCY": "4", "FOREMAN_MAX_QUEUE": "0", "FOREMAN_QUEUE_TIMEOUT": "1m30s"})
    assert (custom.concurrency, custom.max_queue, custom.queue_timeout) == (4, 0, 90.0)
    assert load({}, flags("--concurrency", "2")).concurrency == 2
    assert defaults.max_queue_per_client == 32
    assert load({"FOREMAN_MAX_QUEUE_PER_CLIENT": "1"}).max_queue_per_client == 1
    assert load({}, flags("--max-queue-per-client", "5")).max_queue_per_client == 5


@pytest.mark.parametrize(
    "variable, value",
    [
        ("FOREMAN_CONCURRENCY", "0"),
        ("FOREMAN_CONCURRENCY", "two"),
        ("FOREMAN_CONCURRENCY", "1.5"),
        ("FOREMAN_MAX_QUEUE", "-1"),
        ("FOREMAN_MAX_QUEUE", "99999999"),
        ("FOREMAN_MAX_QUEUE_PER_CLIENT", "0"),
        ("FOREMAN_MAX_QUEUE_PER_CLIENT", "-3"),
        ("FOREMAN_QUEUE_TIMEOUT", "0"),
        ("FOREMAN_QUEUE_TIMEOUT", "forever"),
    ],
)
def test_bad_queue_settings_name_the_variable(variable, value):
    message = error_for({variable: value})
    assert message.startswith(f"{variable}={value!r} ")
    assert "\n" not in message


def test_wake_settings_default_off_and_to_the_broadcast_address():
    defaults = load({})
    assert defaults.wake_mac is None
    assert defaults.wake_address == ("255.255.255.255", 9)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a4:83:e7:12:34:56", "a4:83:e7:12:34:56"),
        ("A4:83:E7:12:34:56", "a4:83:e7:12:34:56"),
        ("a4-83-e7-12-34-56", "a4:83:e7:12:34:56"),
        (" 00:1b:63:aa:bb:0c ", "00:1b:63:aa:bb:0c"),
    ],
)
def test_wake_mac_forms(text, expected):
    assert load({"FOREMAN_WAKE_MAC": text}).wake_mac == expected
    assert load({}, flags("--wake-mac", text)).wake_mac == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("192.168.1.255:9", ("192.168.1.255", 9)),
        ("127.0.0.1:40000", ("127.0.0.1", 40000)),
        ("[ff02::1]:9", ("ff02::1", 9)),
    ],
)
def test_wake_address_forms(text, expected):
    assert load({"FOREMAN_WAKE_ADDRESS": text}).wake_address == expected


@pytest.mark.parametrize(
    "variable, value",
    [
        ("FOREMAN_WAKE_MAC", "a4:83:e7:12:34"),
        ("FOREMAN_WAKE_MAC", "a4:83:e7:12:34:56:78"),
        ("FOREMAN_WAKE_MAC", "a4:83-e7:12:34:56"),  # one separator, not a mix
        ("FOREMAN_WAKE_MAC", "a483e7123456"),
        ("FOREMAN_WAKE_MAC", "a4.83.e7.12.34.56"),
        ("FOREMAN_WAKE_MAC", "g4:83:e7:12:34:56"),
        ("FOREMAN_WAKE_MAC", "ff:ff:ff:ff:ff:ff"),  # broadcast: no machine's own
        ("FOREMAN_WAKE_MAC", "01:00:5e:00:00:01"),  # multicast
        ("FOREMAN_WAKE_MAC", "00:00:00:00:00:00"),
        ("FOREMAN_WAKE_MAC", "a4:83:e7:12:34:56\nx"),
        ("FOREMAN_WAKE_ADDRESS", "255.255.255.255"),
        ("FOREMAN_WAKE_ADDRESS", "mac.local:9"),  # never a name to look up
        ("FOREMAN_WAKE_ADDRESS", "192.168.1.255:0"),
        ("FOREMAN_WAKE_ADDRESS", "192.168.1.255:65536"),
        ("FOREMAN_WAKE_ADDRESS", "ff02::1:9"),
    ],
)
def test_bad_wake_settings_are_one_line_naming_the_variable(variable, value):
    message = error_for({variable: value})
    assert message.startswith(f"{variable}={value!r} ")
    assert "\n" not in message and "; use " in message


def test_admin_tokens_parsed_and_hidden():
    cfg = load({"FOREMAN_ADMIN_TOKENS": " root-1 , root-2,root-1"})
    assert cfg.admin_tokens == ("root-1", "root-2")
    assert "root-1" not in repr(cfg)
    message = error_for({"FOREMAN_ADMIN_TOKENS": "bad token"})
    assert message.startswith("FOREMAN_ADMIN_TOKENS (value hidden)") and "bad token" not in message


def test_admin_tokens_file_and_metrics_flag(tmp_path):
    path = tmp_path / "admins"
    path.write_text("# admins\nroot-file\n")
    cfg = load({"FOREMAN_ADMIN_TOKENS": "root-env", "FOREMAN_ADMIN_TOKENS_FILE": str(path)})
    assert cfg.admin_tokens == ("root-env", "root-file")
    assert load({}).metrics_public is False
    assert load({"FOREMAN_METRICS_PUBLIC": "1"}).metrics_public is True
    assert load({"FOREMAN_METRICS_PUBLIC": "off"}).metrics_public is False
    message = error_for({"FOREMAN_METRICS_PUBLIC": "maybe"})
    assert message.startswith("FOREMAN_METRICS_PUBLIC='maybe' ")


@pytest.mark.parametrize(
    "text, size",
    [("64MiB", 64 << 20), ("1GB", 10**9), ("512KB", 512_000), ("1048576", 1 << 20), ("1.5GiB", 3 << 29), ("10 kib", 10240)],
)
def test_sizes(text, size):
    assert config.parse_size(text) == size
    assert load({"FOREMAN_MAX_BODY": text}).max_body == size


@pytest.mark.parametrize("text", ["lots", "-1MB", "0", "12XB", "MB"])
def test_bad_sizes_name_the_variable(text):
    assert error_for({"FOREMAN_MAX_BODY": text}).startswith(f"FOREMAN_MAX_BODY={text!r} is not a size")


def test_limit_defaults():
    cfg = load({})
    assert (cfg.max_body, cfg.client_timeout, cfg.target_idle_timeout) == (64 << 20, 60.0, 600.0)
