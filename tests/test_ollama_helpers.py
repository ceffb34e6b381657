"""Pure helpers of the Ollama side: the model-name validator, size/processor formatting, progress."""
import doctest

import pytest

import ollama_client.downloads
import ollama_client.formatting
import ollama_client.names
from ollama_client.downloads import PullProgress
from ollama_client.formatting import human_bytes, iso_time, processor, short_id
from ollama_client.names import InvalidModelName, canonical_or_none, parse_model_name


@pytest.mark.parametrize("module", [ollama_client.names, ollama_client.formatting, ollama_client.downloads])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.failed == 0
    assert result.attempted > 0


VALID = [
    ("llama3.2", (None, None, "llama3.2", None)),
    ("llama3.2:latest", (None, None, "llama3.2", "latest")),
    ("qwen2.5-coder:7b-instruct-q4_K_M", (None, None, "qwen2.5-coder", "7b-instruct-q4_K_M")),
    ("library/llama3:8b", (None, "library", "llama3", "8b")),
    ("my_user-1/model_x", (None, "my_user-1", "model_x", None)),
    ("registry.ollama.ai/library/llama3:8b", ("registry.ollama.ai", "library", "llama3", "8b")),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
     ("hf.co", "bartowski", "Llama-3.2-1B-Instruct-GGUF", "Q4_K_M")),
    ("HF.CO/x/y", ("HF.CO", "x", "y", None)),
    ("_private", (None, None, "_private", None)),
    ("a" * 80 + ":" + "t" * 80, (None, None, "a" * 80, "t" * 80)),
]


@pytest.mark.parametrize("name,parts", VALID)
def test_valid_names_parse_into_their_parts(name, parts):
    parsed = parse_model_name(name)
    assert (parsed.registry, parsed.namespace, parsed.model, parsed.tag) == parts
    assert str(parsed) == name


INVALID = [
    (None, "must be a string"),
    (42, "must be a string"),
    ("", "must not be empty"),
    ("../../etc/passwd", "'..' is not allowed"),
    ("llama3/../x", "'..' is not allowed"),
    ("llama 3", "spaces are not allowed"),
    ("llama3\t", "control character '\\t' is not allowed"),
    ("llama3\n", "control character '\\n' is not allowed"),
    ("llama3\x00", "control character '\\x00' is not allowed"),
    ("lläma3", "non-ASCII character 'ä' is not allowed"),
    ("llama3;rm -rf /", "spaces are not allowed"),
    ("llama3;id", "character ';' is not allowed"),
    ("$(id)", "character '$' is not allowed"),
    ("`id`", "character '`' is not allowed"),
    ("a|b", "character '|' is not allowed"),
    ("llama3@sha256:abc", "digests ('@sha256:...') are not accepted; name the model and tag"),
    ("/llama3", "empty path part (leading, trailing or double '/')"),
    ("llama3/", "empty path part (leading, trailing or double '/')"),
    ("a//b", "empty path part (leading, trailing or double '/')"),
    ("a/b/c/d", "too many '/' parts (at most registry/namespace/model:tag)"),
    ("evil.com/x/y", "registry 'evil.com' is not allowed (OLLAMA_ALLOWED_REGISTRIES: registry.ollama.ai, hf.co)"),
    ("localhost:5000/x/y", "registry 'localhost:5000' is not allowed "
                           "(OLLAMA_ALLOWED_REGISTRIES: registry.ollama.ai, hf.co)"),
    ("llama3:", "the tag part is empty"),
    (":latest", "the model part is empty"),
    ("-llama", "the model part must start with a letter, digit or '_'"),
    (".llama", "the model part must start with a letter, digit or '_'"),
    ("llama3:-x", "the tag part must start with a letter, digit or '_'"),
    ("name.space/model", "the namespace part may contain only letters, digits, '_' and '-' (found '.')"),
    ("a:b:c", "the model part may contain only letters, digits, '_', '-' and '.' (found ':')"),
    ("a" * 81, "the model part is too long (81 characters; at most 80)"),
    ("m:" + "t" * 81, "the tag part is too long (81 characters; at most 80)"),
    ("n" * 81 + "/m", "the namespace part is too long (81 characters; at most 80)"),
    ("x" * 700, "too long (700 characters; at most 593)"),
]


@pytest.mark.parametrize("name,problem", INVALID)
def test_invalid_names_are_refused_naming_the_problem(name, problem):
    with pytest.raises(InvalidModelName) as caught:
        parse_model_name(name)
    assert caught.value.message == f"invalid model_name: {problem}"
    assert caught.value.status == 400


def test_allowed_registries_come_from_the_configuration():
    assert parse_model_name("my.registry:5000/team/model:1", ["my.registry:5000"]).registry == "my.registry:5000"
    with pytest.raises(InvalidModelName, match="registry 'hf.co' is not allowed"):
        parse_model_name("hf.co/a/b", ["registry.ollama.ai"])
    with pytest.raises(InvalidModelName, match=r"\(OLLAMA_ALLOWED_REGISTRIES: none\)"):
        parse_model_name("hf.co/a/b", [])


def test_canonical_names_fill_in_ollamas_defaults():
    assert parse_model_name("llama3").canonical == "registry.ollama.ai/library/llama3:latest"
    assert parse_model_name("LLama3:8B").canonical == "registry.ollama.ai/library/llama3:8b"
    assert canonical_or_none("bartowski/x:q4") == "registry.ollama.ai/bartowski/x:q4"
    assert canonical_or_none("example.com/a/b") == "example.com/a/b:latest"
    assert canonical_or_none("bad name") is None


@pytest.mark.parametrize("size,text", [
    (0, "0 B"), (1, "1 B"), (999, "999 B"), (1000, "1 KB"), (1050, "1.1 KB"), (9_999, "10.0 KB"),
    (10_000, "10 KB"), (274_302_450, "274 MB"), (1_000_000_000, "1 GB"), (2_019_393_189, "2.0 GB"),
    (4_661_224_676, "4.7 GB"), (4_683_087_332, "4.7 GB"), (39_969_745_349, "39 GB"),
    (999_999_999_999, "999 GB"), (1_500_000_000_000, "1.5 TB"), (123_000_000_000_000, "123 TB"),
])
def test_human_bytes_matches_ollamas_cli(size, text):
    assert human_bytes(size) == text


@pytest.mark.parametrize("size,size_vram,text", [
    (5_000, 0, "100% CPU"), (5_000, 5_000, "100% GPU"), (100, 52, "48%/52% CPU/GPU"),
    (1000, 505, "50%/50% CPU/GPU"),  # 49.5 rounds away from zero, as Go's math.Round
    (1000, 995, "1%/99% CPU/GPU"), (1000, 1001, "Unknown"), (0, 0, "100% CPU"),
])
def test_processor_matches_ollama_ps(size, size_vram, text):
    assert processor(size, size_vram) == text


def test_short_id_and_iso_time():
    assert short_id("sha256:2b0496514337a3d5901f1d253d01726c") == "2b0496514337"
    assert short_id("") == ""
    assert iso_time(1732560000.5) == "2024-11-25T18:40:00.500+00:00"
    assert iso_time(None) is None


def test_progress_is_whole_model_and_monotonic():
    progress = PullProgress()
    reported = []
    lines = [
        {"status": "pulling manifest"},
        {"digest": "sha256:a", "total": 800, "completed": 0},
        {"digest": "sha256:a", "total": 800, "completed": 400},
        {"digest": "sha256:a", "total": 800, "completed": 300},  # a part retried: rolled back
        {"digest": "sha256:a", "total": 800, "completed": 800},
        {"digest": "sha256:b", "total": 200, "completed": 0},    # a new layer: the total grows
        {"digest": "sha256:b", "total": 200, "completed": 100},
        {"digest": "sha256:b", "total": 200, "completed": 200},
        {"digest": "sha256:b", "total": "200", "completed": True},  # garbage is ignored
    ]
    for line in lines:
        progress.update(line)
        reported.append((progress.percent, progress.completed_bytes, progress.total_bytes))
    assert reported == [(0.0, 0, 0), (0.0, 0, 800), (50.0, 400, 800), (50.0, 400, 800), (99.9, 800, 800),
                        (99.9, 800, 1000), (99.9, 900, 1000), (99.9, 1000, 1000), (99.9, 1000, 1000)]
    progress.finish()
    assert (progress.percent, progress.completed_bytes) == (100.0, 1000)
