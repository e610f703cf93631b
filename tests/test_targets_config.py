"""Several targets in the configuration: FOREMAN_OLLAMA_URL's list and FOREMAN_TARGETS_FILE."""

from __future__ import annotations

import pytest

from foreman.config import ConfigError, load


def error_for(environ):
    with pytest.raises(ConfigError) as info:
        load(environ)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_one_url_is_one_target_named_by_host_port():
    (spec,) = load({"FOREMAN_OLLAMA_URL": "http://127.0.0.1:11434"}).target_specs
    assert (spec.name, spec.url, spec.concurrency) == ("127.0.0.1:11434", "http://127.0.0.1:11434", 1)


def test_comma_separated_urls_are_several_targets():
    config = load({"FOREMAN_OLLAMA_URL": "http://a.local:11434/, http://b.local:8000", "FOREMAN_CONCURRENCY": "3"})
    specs = config.target_specs
    assert [s.name for s in specs] == ["a.local:11434", "b.local:8000"]
    assert [s.url for s in specs] == ["http://a.local:11434", "http://b.local:8000"]
    assert all(s.concurrency == 3 for s in specs)


def test_the_same_machine_twice_in_the_list_is_refused():
    message = error_for({"FOREMAN_OLLAMA_URL": "http://a.local:11434,http://a.local:11434/x"})
    assert "FOREMAN_OLLAMA_URL" in message and "a.local:11434" in message


def write(tmp_path, text):
    path = tmp_path / "targets.toml"
    path.write_text(text)
    return str(path)


def test_file_keys_and_defaults(tmp_path):
    path = write(
        tmp_path,
        '[[target]]\nname = "studio"\nurl = "http://10.0.0.2:11434"\nconcurrency = 2\n'
        'token = "t-studio"\nwake_mac = "A4-83-E7-12-34-56"\nwake_address = "10.0.0.255:9"\n'
        '[[target]]\nurl = "http://10.0.0.3:11434"\n',
    )
    config = load({
        "FOREMAN_TARGETS_FILE": path, "FOREMAN_CONCURRENCY": "4", "FOREMAN_OLLAMA_TOKEN": "t-all",
    })
    studio, other = config.target_specs
    assert (studio.name, studio.concurrency, studio.token) == ("studio", 2, "t-studio")
    assert (studio.wake_mac, studio.wake_address) == ("a4:83:e7:12:34:56", ("10.0.0.255", 9))
    assert (other.name, other.concurrency, other.token) == ("10.0.0.3:11434", 4, "t-all")
    assert (other.wake_mac, other.wake_address) == (None, ("255.255.255.255", 9))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[target]]\nname = "a"\nurl = "http://h:1"\ncolour = "red"\n', "target 'a': unknown key 'colour'"),
        ('[[target]]\nname = "a"\nurl = "http://h:1"\n[[target]]\nname = "a"\nurl = "http://h:2"\n',
         "target 'a': the name is used by another target"),
        ('[[target]]\nname = "a"\nurl = "http://h:1"\n[[target]]\nname = "b"\nurl = "http://h:1/"\n',
         "target 'b': url 'http://h:1' is another target's too"),
        ('[[target]]\nname = "a"\n', "target 'a': url is required"),
        ('[[target]]\nname = "a"\nurl = "ftp://h"\n', "target 'a': url"),
        ('[[target]]\nname = "a"\nurl = "http://h:1"\nconcurrency = 0\n', "target 'a': concurrency"),
        ("[[target]\n", "is not valid TOML"),
        ("", "has no [[target]] tables"),
    ],
)
def test_bad_file_names_the_file_the_target_and_the_problem(tmp_path, text, expected):
    path = write(tmp_path, text)
    message = error_for({"FOREMAN_TARGETS_FILE": path})
    assert message.startswith(f"FOREMAN_TARGETS_FILE={path!r}")
    assert expected in message


def test_file_and_url_together_are_refused(tmp_path):
    path = write(tmp_path, '[[target]]\nurl = "http://h:1"\n')
    message = error_for({"FOREMAN_TARGETS_FILE": path, "FOREMAN_OLLAMA_URL": "http://h:2"})
    assert "FOREMAN_TARGETS_FILE" in message and "FOREMAN_OLLAMA_URL" in message


def test_bad_file_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys

    path = write(tmp_path, '[[target]]\nname = "a"\nurl = "http://127.0.0.1:1"\nport = 3\n')
    result = subprocess.run(
        [sys.executable, "-m", "foreman", "serve"],
        env={"FOREMAN_TARGETS_FILE": path, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "target 'a': unknown key 'port'" in result.stderr


def test_a_comma_in_a_password_does_not_split_the_url():
    (spec,) = load({"FOREMAN_OLLAMA_URL": "http://user:pa,ss@h.local:11434"}).target_specs
    assert spec.url == "http://user:pa,ss@h.local:11434" and spec.name == "h.local:11434"
