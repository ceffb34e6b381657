"""VRAM per model and "will it fit?": the formula, the GGUF reader, attribution, the index, the routes.

Real processes with Ollama runners' command lines stand in for runners; their PIDs go into the
fake NVML. The fake Ollama's /api/show names their blobs; a fake registry serves manifests and
GGUF blobs over HTTPS (a self-signed certificate trusted through SSL_CERT_FILE).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import time

import pytest

from ollama_client import fit, gguf
from ollama_client.fit import LoadedModel, model_shape
from ollama_client.model_index import ModelIndex, blob_of_modelfile
from ollama_client.names import parse_model_name
from tests.fakes.fake_nvml import GIB, MIB, FakeGpu, FakeProcess, Scenario
from tests.fakes.fake_registry import FakeRegistry
from vram.attribution import Attributor, read_cmdline, runner_model
from vram.snapshot import ProcessSnapshot, VramSnapshot

BASE = "/api/models/ollama"
RESERVE = 457 * MIB

LLAMA31_8B = {"general.architecture": "llama", "llama.block_count": 32, "llama.embedding_length": 4096,
              "llama.attention.head_count": 32, "llama.attention.head_count_kv": 8, "llama.vocab_size": 128256,
              "llama.context_length": 131072}
QWEN25_7B = {"general.architecture": "qwen2", "qwen2.block_count": 28, "qwen2.embedding_length": 3584,
             "qwen2.attention.head_count": 28, "qwen2.attention.head_count_kv": 4, "qwen2.context_length": 32768}
GEMMA2_2B = {"general.architecture": "gemma2", "gemma2.block_count": 26, "gemma2.embedding_length": 2304,
             "gemma2.attention.head_count": 8, "gemma2.attention.head_count_kv": 4,
             "gemma2.attention.key_length": 256, "gemma2.attention.value_length": 256}
LLAMA31_SIZE = 4_920_753_328
QWEN_SIZE = 4_683_087_332


def blob(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def blob_path(digest: str) -> str:
    return "/usr/share/ollama/.ollama/models/blobs/" + digest.replace(":", "-")


@pytest.mark.parametrize("module", ["ollama_client.fit", "ollama_client.gguf", "ollama_client.model_index",
                                    "vram.attribution"])
def test_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0


# -- the formula, by hand -------------------------------------------------------------------------

@pytest.mark.parametrize("info, num_ctx, kv", [
    (LLAMA31_8B, 8192, 32 * 8192 * 8 * (128 + 128) * 2),      # 1,073,741,824
    (QWEN25_7B, 4096, 28 * 4096 * 4 * (128 + 128) * 2),       # 234,881,024: head dim 3584/28 = 128
    (GEMMA2_2B, 8192, 26 * 8192 * 4 * (256 + 256) * 2),       # key_length 256, not 2304/8 = 288
])
def test_kv_cache_matches_hand_computed_numbers(info, num_ctx, kv):
    assert fit.kv_cache_bytes(model_shape(info), num_ctx) == kv
    assert kv in (1_073_741_824, 234_881_024, 872_415_232)


def test_overhead_is_ollamas_graph_estimate_plus_the_runtime_reserve():
    shape = model_shape(LLAMA31_8B)
    # batch 512: max(4*512*(1 + 4*4096 + 8192*(1+32)), 4*512*(4096 + 128256))
    assert fit.graph_bytes(shape, 8192) == 587_204_608
    assert fit.overhead_bytes(shape, 8192) == 587_204_608 + RESERVE
    # a small context: the output (vocabulary) term dominates
    assert fit.graph_bytes(shape, 2048) == 4 * 512 * (4096 + 128256) == 271_056_896
    assert fit.graph_bytes(shape, 16) == max(4 * 16 * (1 + 4 * 4096 + 16 * 33), 4 * 16 * (4096 + 128256))


def test_per_layer_head_counts_sum_over_layers():
    info = {**QWEN25_7B, "qwen2.block_count": 3, "qwen2.attention.head_count_kv": [4, 0, 2]}
    assert fit.kv_cache_bytes(model_shape(info), 100) == 100 * 6 * 256 * 2


@pytest.mark.parametrize("drop, named", [
    ("general.architecture", "general.architecture"),
    ("llama.block_count", "llama.block_count"),
    ("llama.embedding_length", "llama.embedding_length"),
    ("llama.attention.head_count", "llama.attention.head_count"),
])
def test_missing_model_info_keys_are_named(drop, named):
    info = {k: v for k, v in LLAMA31_8B.items() if k != drop}
    with pytest.raises(fit.MissingModelInfo) as caught:
        model_shape(info)
    assert named in str(caught.value)


@pytest.mark.parametrize("bad", [0, -1, "32", True, 1.5, None, [], {}])
def test_nonsense_model_info_values_are_missing_not_crashes(bad):
    with pytest.raises(fit.MissingModelInfo):
        model_shape({**LLAMA31_8B, "llama.block_count": bad})


@pytest.mark.parametrize("value, ok", [(None, 4096), (1, 1), (1_048_576, 1_048_576), (0, None), (1_048_577, None),
                                       ("4096", None), (4096.0, 4096), (4096.5, None), (1e300, None),
                                       (float("nan"), None), (float("inf"), None), (True, None), (-5, None)])
def test_num_ctx_bounds(value, ok):
    if ok is None:
        with pytest.raises(ValueError, match="num_ctx"):
            fit.parse_num_ctx(value)
    else:
        assert fit.parse_num_ctx(value) == ok


# -- unload_to_fit ---------------------------------------------------------------------------------

def test_unload_to_fit_prefers_fewest_then_soonest_expiry():
    soon, later = "2025-01-01T10:00:00.123456789+01:00", "2025-06-01T10:00:00Z"
    big_late = LoadedModel("big", 6 * GIB, later, {0: 6 * GIB})
    big_soon = LoadedModel("big2", 6 * GIB, soon, {0: 6 * GIB})
    small = LoadedModel("small", 1 * GIB, soon, {0: 1 * GIB})
    assert fit.unload_to_fit(5 * GIB, {0: 1 * GIB}, [big_late, big_soon, small]) == ["big2"]
    assert fit.unload_to_fit(8 * GIB, {0: 1 * GIB}, [big_late, small]) == ["small", "big"]  # soonest first
    assert fit.unload_to_fit(99 * GIB, {0: 1 * GIB}, [big_late, small]) == []
    assert fit.unload_to_fit(1 * GIB, {0: 1 * GIB}, [big_late]) == []  # fits already


def test_unload_to_fit_counts_ollama_only_sizes_toward_a_split():
    only_ollama = LoadedModel("m", 4 * GIB, None, {})
    assert fit.unload_to_fit(4 * GIB, {0: 3 * GIB}, [only_ollama]) == ["m"]          # one GPU: it is there
    assert fit.unload_to_fit(9 * GIB, {0: 3 * GIB, 1: 3 * GIB}, [only_ollama]) == ["m"]  # split total
    assert fit.unload_to_fit(11 * GIB, {0: 3 * GIB, 1: 3 * GIB}, [only_ollama]) == []


def test_estimate_messages():
    base = dict(model_name="m", num_ctx=4096, weights_bytes=GIB, kv_cache_bytes=0, overhead_bytes=0, source="local")
    assert fit.FitEstimate(**base, gpus=((0, 2 * GIB),)).message() == "fits on GPU 0"
    split = fit.FitEstimate(**base, gpus=((0, GIB // 2), (1, GIB // 2)))
    assert split.fits and split.split and split.message() == "fits split across GPUs 0, 1"
    short = fit.FitEstimate(**{**base, "weights_bytes": 3_100_000_000}, gpus=((0, 1_000_000_000),),
                            unload_to_fit=("qwen2.5:7b",))
    assert short.message() == "needs 2.1 GB more — unload qwen2.5:7b?"
    body = short.to_dict()
    assert body["fits"] is False and body["gpus"] == [{"index": 0, "free_bytes": 1_000_000_000, "fits": False}]
    assert body["required_bytes"] == body["weights_bytes"] + body["kv_cache_bytes"] + body["overhead_bytes"]


# -- the GGUF reader -------------------------------------------------------------------------------

def test_gguf_round_trip_and_early_stop():
    header = gguf.build_header({**LLAMA31_8B, "tokenizer.ggml.tokens": [f"t{i}" for i in range(5000)],
                                "tokenizer.chat_template": "x" * 100})
    meta = gguf.read_metadata(header, wanted=lambda k: k.startswith(("general.", "llama.")))
    assert meta.complete and meta.values["llama.block_count"] == 32
    assert meta.array_lengths["tokenizer.ggml.tokens"] == 5000
    # Stopping at the token list's length: the bytes after it are never needed.
    cut = header[:header.index(b"tokenizer.ggml.tokens") + 40]
    meta = gguf.read_metadata(cut, wanted=lambda k: not k.startswith("tokenizer."),
                              enough=lambda m: "tokenizer.ggml.tokens" in m.array_lengths)
    assert not meta.complete and meta.array_lengths["tokenizer.ggml.tokens"] == 5000


def test_every_prefix_of_a_header_is_truncated_never_wrong():
    header = gguf.build_header({**GEMMA2_2B, "tokenizer.ggml.tokens": ["a", "bb"], "f": 1.5, "flag": True,
                                "big": 1 << 40})
    for end in range(len(header)):
        with pytest.raises(gguf.GgufTruncated) as caught:
            gguf.read_metadata(header[:end], wanted=lambda k: True)
        assert caught.value.needed_bytes > end


def _kv_header(*entries: bytes, count: int | None = None) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries) if count is None else count) + b"".join(entries)


def _key(name: bytes) -> bytes:
    return struct.pack("<Q", len(name)) + name


@pytest.mark.parametrize("data, problem", [
    (b"GGML" + bytes(20), "magic"),
    (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "version"),
    (_kv_header(count=2 ** 63), "metadata keys"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2 ** 62), "a key"),
    (_kv_header(_key(b"k") + struct.pack("<IQ", 8, 2 ** 40)), "a string"),
    (_kv_header(_key(b"k") + struct.pack("<IIQ", 9, 8, 2 ** 60)), "array"),
    (_kv_header(_key(b"k") + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1)),
     "nested"),
    (_kv_header(_key(b"k") + struct.pack("<I", 99)), "type"),
    (_kv_header(_key(b"\xff\xfe") + struct.pack("<II", 4, 1)), "UTF-8"),
])
def test_hostile_headers_are_refused_without_allocating(data, problem):
    started = time.perf_counter()
    with pytest.raises(gguf.GgufError, match=problem):
        gguf.read_metadata(data, wanted=lambda k: True)
    assert time.perf_counter() - started < 0.5


def test_a_wanted_array_too_long_to_keep_is_refused():
    data = _kv_header(_key(b"k") + struct.pack("<IIQ", 9, 0, gguf.MAX_KEPT_ITEMS + 1) + bytes(gguf.MAX_KEPT_ITEMS + 1))
    with pytest.raises(gguf.GgufError, match="too long"):
        gguf.read_metadata(data, wanted=lambda k: True)
    assert gguf.read_metadata(data, wanted=lambda k: False).array_lengths == {"k": gguf.MAX_KEPT_ITEMS + 1}


def test_a_huge_fixed_size_array_is_truncated_not_allocated():
    data = _kv_header(_key(b"k") + struct.pack("<IIQ", 9, 12, 10_000_000))  # 80 MB of float64 claimed
    with pytest.raises(gguf.GgufTruncated) as caught:
        gguf.read_metadata(data, wanted=lambda k: False)
    assert caught.value.needed_bytes > 80_000_000


def test_random_bytes_never_escape_as_other_errors():
    rng = random.Random(1234)
    valid = gguf.build_header({**LLAMA31_8B, "tokenizer.ggml.tokens": ["x"] * 20})
    started = time.perf_counter()
    for _ in range(2000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            gguf.read_metadata(bytes(data[:rng.randint(0, len(data))]), wanted=lambda k: True)
        except gguf.GgufError:
            pass
    assert time.perf_counter() - started < 5


# -- attribution: command lines -----------------------------------------------------------------

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize("argv, expected", [
    (["/usr/lib/ollama/llama-server", "--model", f"/root/.ollama/models/blobs/sha256-{HEX}", "--ctx-size", "8192",
      "--port", "41234"], ("blob", f"sha256:{HEX}")),
    (["/usr/local/bin/ollama", "runner", "--model", f"/m/blobs/sha256-{HEX}", "--port", "1"], ("blob", f"sha256:{HEX}")),
    (["ollama", "runner", "--ollama-engine", "--model", f"/m/blobs/sha256-{HEX}"], ("blob", f"sha256:{HEX}")),
    (["ollama", "runner", f"--model=/m/blobs/sha256-{HEX}"], ("blob", f"sha256:{HEX}")),
    (["/usr/local/bin/ollama", "runner", "--mlx-engine", "--model", "llama3.2:latest"], ("name", "llama3.2:latest")),
    (["ollama", "runner", "--ollama-engine", "--port", "40001"], None),       # a discovery probe
    (["ollama", "serve"], None),
    (["ollama", "run", "--model", f"/m/blobs/sha256-{HEX}"], None),
    (["python3", "train.py", "--model", f"/m/blobs/sha256-{HEX}"], None),
    (["ollama", "runner", "--model"], None),
    (["ollama", "runner", "--model", "/home/me/model.gguf"], None),
    (["ollama", "runner", "--model", "../../etc/passwd"], None),
    ([], None),
])
def test_runner_command_lines(argv, expected):
    assert runner_model(argv) == expected


def test_read_cmdline_of_a_missing_or_foreign_process_is_none(tmp_path):
    assert read_cmdline(2 ** 22 + 12345) is None            # no such PID (another namespace)
    assert read_cmdline(os.getpid()) is not None
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cmdline").write_bytes(b"")           # a kernel thread, or a zombie
    assert read_cmdline(7, proc_root=str(tmp_path)) is None
    os.chmod(tmp_path / "7" / "cmdline", 0)
    if os.geteuid() != 0:
        assert read_cmdline(7, proc_root=str(tmp_path)) is None  # no permission


def snapshot_of(*pids: int) -> VramSnapshot:
    return VramSnapshot(timestamp=1.0, processes=tuple(
        ProcessSnapshot(pid=pid, name="x", used_mb=100, gpu_index=0) for pid in pids))


def test_attributor_reads_each_command_line_once_per_process_lifetime():
    reads = []
    argvs = {1: ["ollama", "runner", "--model", f"/b/sha256-{HEX}"], 2: ["Xorg"], 3: None}

    def read(pid):
        reads.append(pid)
        return argvs[pid]

    unknown = []
    attributor = Attributor({f"sha256:{HEX}": "llama3.2:latest"}.get, read_argv=read, on_unknown=unknown.append)
    for _ in range(5):
        out = attributor(snapshot_of(1, 2, 3, 1))
    assert [p.model for p in out.processes] == ["llama3.2:latest", None, None, "llama3.2:latest"]
    assert sorted(reads) == [1, 2, 3] and unknown == []
    attributor(snapshot_of(2))      # 1 and 3 left the GPU: forgotten, read again if they come back
    attributor(snapshot_of(1, 2))
    assert sorted(reads) == [1, 1, 2, 3]
    argvs[1] = ["ollama", "runner", "--model", f"/b/sha256-{'f' * 64}"]
    attributor(snapshot_of(2))
    assert attributor(snapshot_of(1)).processes[0].model is None and unknown == [f"sha256:{'f' * 64}"]


# -- real processes shaped like runners -------------------------------------------------------------

@pytest.fixture
def spawn_runner(tmp_path):
    """Start a sleeping process whose /proc/<pid>/cmdline reads like an Ollama runner's."""
    procs = []
    (tmp_path / "runner").write_text("import time\ntime.sleep(60)\n")

    def start(kind: str, digest: str) -> int:
        if kind == "llama-server":
            argv = ["/usr/lib/ollama/llama-server", "-c", "import time; time.sleep(60)",
                    "--model", blob_path(digest), "--ctx-size", "4096", "--port", "41001"]
        else:  # python runs the script named "runner" in cwd, so argv[1] is "runner" as in Ollama's
            argv = ["/usr/local/bin/ollama", "runner", "--ollama-engine", "--model", blob_path(digest),
                    "--port", "41002"]
        proc = subprocess.Popen(argv, executable=sys.executable, cwd=tmp_path, stdin=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 5
        while (read_cmdline(proc.pid) or [""])[0] != argv[0]:
            assert time.monotonic() < deadline, "runner did not start"
            time.sleep(0.01)
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_real_runner_processes_are_recognised(spawn_runner):
    digest = blob("x")
    for kind in ("llama-server", "ollama"):
        pid = spawn_runner(kind, digest)
        assert runner_model(read_cmdline(pid)) == ("blob", digest)


# -- the model index -------------------------------------------------------------------------------

@pytest.fixture
def ollama(fake_ollama):
    from ollama_client.client import OllamaClient

    client = OllamaClient(fake_ollama.url)
    yield client
    client.close()


def test_modelfile_from_line():
    assert blob_of_modelfile(f"FROM {blob_path(blob('a'))}\n") == blob("a")
    assert blob_of_modelfile("# FROM /x/blobs/sha256-" + "a" * 64 + "\nFROM llama3.2\n") is None
    assert blob_of_modelfile(None) is None


def test_index_maps_blobs_and_narrows_shared_ones_by_ps(fake_ollama, ollama):
    shared = blob("shared")
    fake_ollama.set_models([{"name": "a:latest", "blob": shared}, {"name": "b:latest", "blob": shared},
                            {"name": "c:latest", "blob": blob("c")}])
    index = ModelIndex(ollama)
    index.refresh()
    assert index.name_for_blob(blob("c")) == "c:latest"
    assert sorted(index.names_for_blob(shared)) == ["a:latest", "b:latest"]
    assert index.name_for_blob(shared) is None                       # nothing loaded: cannot tell
    fake_ollama.set_loaded([{"name": "b"}])
    index.refresh()
    assert index.name_for_blob(shared) == "b:latest"
    assert fake_ollama.count("POST", "/api/show") == 3               # cached by digest across refreshes


def test_index_refreshes_in_the_background_only_when_tags_change(fake_ollama, ollama):
    import concurrency

    index = ModelIndex(ollama, min_refresh_interval_s=60)
    tags = ollama.list_models()
    index.observe_tags(tags)
    deadline = time.monotonic() + 5
    while not index.names_for_blob(blob("blob:llama3.2:latest")):
        assert time.monotonic() < deadline
        concurrency.sleep(0.01)
    shows = fake_ollama.count("POST", "/api/show")
    for _ in range(5):
        index.observe_tags(tags)          # unchanged: nothing to do
        index.request_refresh(blob("unknown"))  # rate-limited, and asked once
    concurrency.sleep(0.1)
    assert fake_ollama.count("POST", "/api/show") == shows == 3
    assert fake_ollama.count("GET", "/api/tags") <= 2


# -- the app: status, loaded, fit, load ---------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_registry(tmp_path_factory):
    registry = FakeRegistry(tmp_path_factory.mktemp("registry")).start()
    yield registry
    registry.stop()


@pytest.fixture
def config_overrides(fake_ollama, fake_registry, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(fake_registry.cert))
    return {"ollama_host": fake_ollama.url,
            "ollama_allowed_registries": ("registry.ollama.ai", "hf.co", fake_registry.host)}


def small_gpus(*processes: FakeProcess, used=(2 * GIB, 2 * GIB)) -> Scenario:
    return Scenario(gpus=tuple(FakeGpu(name=f"GPU {i}", uuid=f"GPU-{i}", total_bytes=8 * GIB, used_bytes=u)
                               for i, u in enumerate(used)), processes=processes)


@pytest.fixture
def two_models(fake_ollama):
    fake_ollama.set_models([
        {"name": "llama3.1:8b", "size": LLAMA31_SIZE, "blob": blob("llama31"), "model_info": LLAMA31_8B},
        {"name": "qwen2.5:7b", "size": QWEN_SIZE, "blob": blob("qwen25"), "model_info": QWEN25_7B, "family": "qwen2"},
        {"name": "noinfo:latest", "size": 1000, "model_info": {"general.architecture": "llama"}},
    ])


def test_status_and_loaded_carry_the_model_and_driver_figures(api, client, auth, services, fake_nvml,
                                                              fake_ollama, two_models, spawn_runner):
    qwen = spawn_runner("llama-server", blob("qwen25"))
    llama = spawn_runner("ollama", blob("llama31"))
    fake_nvml.apply(small_gpus(FakeProcess(qwen, "/usr/lib/ollama/llama-server", 0, 3000 * MIB),
                               FakeProcess(qwen, "/usr/lib/ollama/llama-server", 1, 1000 * MIB),
                               FakeProcess(llama, "/usr/local/bin/ollama", 1, 5000 * MIB),
                               FakeProcess(os.getpid(), "python3", 1, 10 * MIB),
                               FakeProcess(2 ** 22 + 999, "ghost", 0, 10 * MIB)))
    fake_ollama.set_loaded([{"name": "qwen2.5:7b", "size_vram": 4 * GIB}, {"name": "noinfo"}])
    services.model_index.refresh()
    services.poller.tick()
    body = client.get("/api/vram/status", headers=auth.headers()).get_json()
    assert sorted((p["pid"], p["gpu_index"], p["model"] or "") for p in body["processes"]) == sorted([
        (qwen, 0, "qwen2.5:7b"), (qwen, 1, "qwen2.5:7b"), (llama, 1, "llama3.1:8b"),
        (os.getpid(), 1, ""), (2 ** 22 + 999, 0, "")])
    loaded = {m["name"]: m for m in api("get", "loaded").get_json()["models"]}
    assert loaded["qwen2.5:7b"]["gpus"] == [{"index": 0, "used_mb": 3000}, {"index": 1, "used_mb": 1000}]
    assert loaded["qwen2.5:7b"]["vram_source"] == "driver"
    assert loaded["noinfo:latest"]["gpus"] == [] and loaded["noinfo:latest"]["vram_source"] == "ollama"


def test_the_poller_learns_a_new_runner_in_the_background(services, fake_nvml, fake_ollama, two_models,
                                                          spawn_runner):
    import concurrency

    pid = spawn_runner("llama-server", blob("llama31"))
    fake_nvml.apply(small_gpus(FakeProcess(pid, "/usr/lib/ollama/llama-server", 0, 5000 * MIB)))
    assert services.poller.tick().body["processes"][0]["model"] is None  # unknown blob: refresh asked
    deadline = time.monotonic() + 5
    while services.poller.tick().body["processes"][0]["model"] != "llama3.1:8b":
        assert time.monotonic() < deadline
        concurrency.sleep(0.02)
    calls = fake_ollama.counts()
    for _ in range(10):
        services.poller.tick()
    assert fake_ollama.counts() == calls  # no Ollama call per poll


def fit_of(api, **body):
    return api("post", "fit", json=body)


def test_fit_of_a_downloaded_model(api, services, fake_nvml, two_models):
    fake_nvml.apply(small_gpus())
    services.poller.tick()
    response = fit_of(api, model_name="llama3.1:8b", num_ctx=2048)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    kv = 32 * 2048 * 8 * 256 * 2
    overhead = 4 * 512 * (4096 + 128256) + RESERVE
    assert body == {"model_name": "llama3.1:8b", "fits": True, "split": False, "num_ctx": 2048,
                    "required_bytes": LLAMA31_SIZE + kv + overhead, "weights_bytes": LLAMA31_SIZE,
                    "kv_cache_bytes": kv, "overhead_bytes": overhead,
                    "gpus": [{"index": 0, "free_bytes": 6 * GIB, "fits": True},
                             {"index": 1, "free_bytes": 6 * GIB, "fits": True}],
                    "unload_to_fit": [], "source": "local", "message": "fits on GPU 0"}
    split = fit_of(api, model_name="llama3.1:8b", num_ctx=8192).get_json()
    assert split["fits"] and split["split"] and split["kv_cache_bytes"] == 1_073_741_824
    assert fit_of(api, model_name="llama3.1:8b").get_json()["num_ctx"] == 4096


@pytest.mark.parametrize("num_ctx", [0, 1_048_577, "4096", 1.5, True, [4096], -1])
def test_fit_num_ctx_must_be_an_integer_in_range(api, services, two_models, num_ctx):
    services.poller.tick()
    response = fit_of(api, model_name="llama3.1:8b", num_ctx=num_ctx)
    assert response.status_code == 400 and "num_ctx" in response.get_json()["error"]


@pytest.mark.parametrize("name", ["../etc/passwd", "evil.com/x/y", "a b", "", "x" * 2000])
def test_fit_names_go_through_the_one_validator(api, name):
    response = fit_of(api, model_name=name)
    assert response.status_code == 400 and "model_name" in response.get_json()["error"]


def test_fit_without_model_info_is_a_422_naming_the_model(api, services, two_models):
    services.poller.tick()
    response = fit_of(api, model_name="noinfo")
    assert response.status_code == 422
    assert "noinfo" in response.get_json()["error"] and "llama.block_count" in response.get_json()["error"]


def test_fit_without_nvml_is_a_503(api, services, fake_nvml, two_models):
    fake_nvml.scenario_no_driver()
    services.poller.tick()
    assert fit_of(api, model_name="llama3.1:8b").status_code == 503


@pytest.fixture
def crowded(services, fake_nvml, fake_ollama, two_models, spawn_runner):
    """One 8 GiB GPU with 1 GiB free: qwen2.5:7b's runner holds 6 GiB, an old tiny model 0.5 GiB."""
    pid = spawn_runner("llama-server", blob("qwen25"))
    fake_nvml.apply(small_gpus(FakeProcess(pid, "/usr/lib/ollama/llama-server", 0, 6 * GIB), used=(7 * GIB,)))
    fake_ollama.set_loaded([{"name": "qwen2.5:7b", "size_vram": 5 * GIB, "expires_at": "2030-01-01T00:00:00Z"},
                            {"name": "noinfo", "size_vram": GIB // 2, "expires_at": "2026-01-01T00:00:00Z"}])
    services.model_index.refresh()
    services.poller.tick()


def test_fit_names_what_to_unload(api, crowded):
    body = fit_of(api, model_name="llama3.1:8b", num_ctx=2048).get_json()
    assert body["fits"] is False and body["unload_to_fit"] == ["qwen2.5:7b"]
    assert body["message"].startswith("needs ") and body["message"].endswith("— unload qwen2.5:7b?")
    huge = fit_of(api, model_name="llama3.1:8b", num_ctx=1_048_576).get_json()
    assert huge["fits"] is False and huge["unload_to_fit"] == [] and "would not be enough" in huge["message"]


def test_a_loaded_model_counts_its_own_memory_as_free(api, crowded):
    body = fit_of(api, model_name="qwen2.5:7b", num_ctx=2048).get_json()
    assert body["fits"] is True and body["gpus"][0]["free_bytes"] == 7 * GIB


def test_load_require_fit_is_a_409_with_the_fit(api, fake_ollama, crowded):
    response = api("post", "load", json={"model_name": "llama3.1:8b", "require_fit": True})
    assert response.status_code == 409
    body = response.get_json()
    assert body["success"] is False and body["fit"]["unload_to_fit"] == ["qwen2.5:7b"]
    assert fake_ollama.count("POST", "/api/generate") == 0


def test_load_make_room_unloads_through_one_hook_then_loads(api, services, fake_ollama, crowded):
    unloaded = []
    services.fit.on_unload = unloaded.append
    response = api("post", "load", json={"model_name": "llama3.1:8b", "make_room": True})
    assert response.status_code == 200, response.get_json()
    assert "qwen2.5:7b" in response.get_json()["message"] and unloaded == ["qwen2.5:7b"]
    generates = [json.loads(r["body"]) for r in fake_ollama.requests("/api/generate")]
    assert [(g["model"], g["keep_alive"]) for g in generates][0] == ("qwen2.5:7b", 0)
    assert generates[-1]["model"] == "llama3.1:8b"


def test_load_make_room_is_a_409_when_no_set_would_do(api, fake_ollama, services, fake_nvml, two_models):
    fake_nvml.apply(small_gpus(used=(8 * GIB - 100 * MIB,)))
    services.poller.tick()
    response = api("post", "load", json={"model_name": "llama3.1:8b", "make_room": True})
    assert response.status_code == 409 and response.get_json()["fit"]["unload_to_fit"] == []
    assert fake_ollama.count("POST", "/api/generate") == 0
    assert api("post", "load", json={"model_name": "llama3.1:8b", "make_room": "yes"}).status_code == 400


def test_load_fitting_model_with_require_fit_loads(api, services, fake_nvml, two_models):
    fake_nvml.apply(small_gpus())
    services.poller.tick()
    assert api("post", "load", json={"model_name": "qwen2.5:7b", "require_fit": True}).status_code == 200
    assert api("post", "load", json={"model_name": "nope", "require_fit": True}).status_code == 404


def _conforms(document, operation, status, body) -> None:
    """`body` matches the document's schema for that operation's `status` answer (refs resolved)."""
    from jsonschema import Draft202012Validator

    path, method = operation
    responses = document["paths"][path][method]["responses"]
    response = responses[str(status)]
    if "$ref" in response:
        response = document["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    # The document as the root schema: its components resolve, its other keys are not keywords.
    schema = {**document, **response["content"]["application/json"]["schema"]}
    errors = sorted(Draft202012Validator(schema).iter_errors(body), key=str)
    assert not errors, f"{method.upper()} {path} {status}: {errors[0].message} in {body}"


def test_answers_schemathesis_cannot_reach_match_the_document(api, client, auth, services, fake_nvml,
                                                               fake_ollama, crowded):
    """A crowded GPU (not-fitting estimates, the 409 with `fit`), a runner's model, a 422."""
    document = client.get("/api/openapi.json").get_json()
    status = client.get("/api/vram/status", headers=auth.headers()).get_json()
    assert any(p["model"] == "qwen2.5:7b" for p in status["processes"])
    _conforms(document, ("/api/vram/status", "get"), 200, status)
    loaded = api("get", "loaded").get_json()
    assert {m["vram_source"] for m in loaded["models"]} == {"driver", "ollama"}
    _conforms(document, ("/api/models/ollama/loaded", "get"), 200, loaded)
    fit_path = ("/api/models/ollama/fit", "post")
    tight = fit_of(api, model_name="llama3.1:8b", num_ctx=2048)
    assert tight.status_code == 200 and tight.get_json()["unload_to_fit"]
    _conforms(document, fit_path, 200, tight.get_json())
    for body, code in (({"model_name": "llama3.1:8b", "num_ctx": 0}, 400), ({"model_name": "noinfo"}, 422)):
        response = fit_of(api, **body)
        assert response.status_code == code
        _conforms(document, fit_path, code, response.get_json())
    load_path = ("/api/models/ollama/load", "post")
    refused = api("post", "load", json={"model_name": "llama3.1:8b", "require_fit": True})
    assert refused.status_code == 409
    _conforms(document, load_path, 409, refused.get_json())
    no_info = api("post", "load", json={"model_name": "noinfo", "require_fit": True})
    assert no_info.status_code == 422
    _conforms(document, load_path, 422, no_info.get_json())


# -- the registry ------------------------------------------------------------------------------------

def tiny_gguf(tokens: int = 60_000, **extra) -> bytes:
    """A GGUF header (qwen2-shaped), a token list far longer than the first read, and some tensor data."""
    header = gguf.build_header({"general.architecture": "qwen2", "general.name": "tiny", **{
        k: v for k, v in QWEN25_7B.items() if k != "general.architecture"}, **extra,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": [f"tok{i}" for i in range(tokens)]})
    return header + bytes(64 * 1024)


@pytest.fixture
def registry_ready(services, fake_nvml):
    fake_nvml.apply(small_gpus())
    services.poller.tick()


def test_fit_of_a_model_not_downloaded_reads_the_registry(client, auth, fake_registry, registry_ready):
    data = tiny_gguf()
    manifest = fake_registry.add_model("library", "tiny", "q4", data)
    before = len(fake_registry.requests())
    response = client.post(f"{BASE}/fit", json={"model_name": f"{fake_registry.host}/library/tiny:q4",
                                                "num_ctx": 4096}, headers=auth.headers())
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["source"] == "registry"
    assert body["weights_bytes"] == sum(layer["size"] for layer in manifest["layers"])
    assert body["kv_cache_bytes"] == 234_881_024
    graph = max(4 * 512 * (1 + 4 * 3584 + 4096 * 29), 4 * 512 * (3584 + 60_000))
    assert body["overhead_bytes"] == graph + RESERVE
    seen = fake_registry.requests()[before:]
    assert [r["path"] for r in seen] == ["/v2/library/tiny/manifests/q4",
                                         f"/v2/library/tiny/blobs/{manifest['layers'][0]['digest']}"]
    assert seen[1]["headers"]["Range"] == "bytes=0-262143"   # one bounded read; the tokens are never read
    assert len(data) > 262_144
    assert not any("Authorization" in r["headers"] or "Cookie" in r["headers"] for r in seen)
    assert auth.token not in json.dumps(seen)


def test_registry_header_longer_than_the_first_read_is_read_on(api, fake_registry, registry_ready):
    data = tiny_gguf(tokens=10, **{"general.description": "d" * 400_000})
    fake_registry.add_model("library", "wordy", "latest", data)
    response = api("post", "fit", json={"model_name": f"{fake_registry.host}/library/wordy"})
    assert response.status_code == 200, response.get_json()
    ranges = [r["headers"].get("Range") for r in fake_registry.requests() if "/wordy/blobs/" in r["path"]]
    assert ranges[0] == "bytes=0-262143" and ranges[1].startswith("bytes=262144-")


def test_registry_that_ignores_range_is_read_only_as_far_as_needed(api, fake_registry, registry_ready):
    manifest = fake_registry.add_model("library", "norange", "latest", tiny_gguf() + bytes(8 * 1024 * 1024))
    blob_file = fake_registry.root / f"v2/library/norange/blobs/{manifest['layers'][0]['digest']}"
    blob_file.with_name(blob_file.name + ".norange").write_text("")
    assert api("post", "fit", json={"model_name": f"{fake_registry.host}/library/norange"}).status_code == 200


def test_registry_unknown_model_is_a_404(api, fake_registry, registry_ready):
    response = api("post", "fit", json={"model_name": f"{fake_registry.host}/library/nothing:here"})
    assert response.status_code == 404 and "nothing:here" in response.get_json()["error"]


@pytest.mark.parametrize("manifest", [b"<html>oops</html>", b"[]", b'{"layers": "x"}',
                                      b'{"layers": [{"mediaType": "a", "digest": "sha256:zz", "size": 1}]}',
                                      b'{"layers": [{"mediaType": "application/vnd.ollama.image.template", '
                                      b'"digest": "sha256:' + b"a" * 64 + b'", "size": 1}]}'])
def test_registry_garbage_manifest_is_a_502(api, fake_registry, registry_ready, manifest):
    fake_registry.put("v2/library/garbage/manifests/latest", manifest)
    response = api("post", "fit", json={"model_name": f"{fake_registry.host}/library/garbage"})
    assert response.status_code == 502 and "garbage" in response.get_json()["error"]


@pytest.mark.parametrize("header", [
    b"not a gguf at all" * 10,
    gguf.build_header(QWEN25_7B)[:40],                                          # truncated: the blob ends
    b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2 ** 40),        # a key 1 TB long
    b"GGUF" + struct.pack("<IQQ", 3, 0, 2 ** 40),                               # 10^12 keys
    b"GGUF" + struct.pack("<IQQ", 3, 0, 3) + gguf.build_header({"general.architecture": "qwen2", "x": ["s"] * 9})[24:]
    + struct.pack("<Q", 2 ** 50),                                               # a third key 1 PB long
])
def test_registry_hostile_gguf_is_a_502_quickly(api, fake_registry, registry_ready, header):
    name = "hostile" + hashlib.sha256(header).hexdigest()[:8]
    fake_registry.add_model("library", name, "latest", header)
    started = time.monotonic()
    response = api("post", "fit", json={"model_name": f"{fake_registry.host}/library/{name}"})
    assert response.status_code == 502, response.get_json()
    assert name in response.get_json()["error"] and time.monotonic() - started < 5


def test_registry_gguf_without_shape_keys_is_a_422(api, fake_registry, registry_ready):
    fake_registry.add_model("library", "shapeless", "latest",
                            gguf.build_header({"general.architecture": "qwen2", "tokenizer.ggml.tokens": ["a"]}))
    response = api("post", "fit", json={"model_name": f"{fake_registry.host}/library/shapeless"})
    assert response.status_code == 422 and "shapeless" in response.get_json()["error"]


def test_registry_redirects_to_other_hosts_are_not_followed(api, fake_registry, registry_ready):
    fake_registry.add_model("library", "moved", "latest", tiny_gguf(tokens=10))
    fake_registry.put("v2/library/moved/manifests/latest.redirect", b"https://evil.example/steal")
    response = api("post", "fit", json={"model_name": f"{fake_registry.host}/library/moved"})
    assert response.status_code == 502 and "not followed" in response.get_json()["error"]
    # the same host: followed
    manifest = fake_registry.add_model("library", "same", "v1", tiny_gguf(tokens=10))
    fake_registry.put("v2/library/same/manifests/latest", b"")
    fake_registry.put("v2/library/same/manifests/latest.redirect", b"/v2/library/same/manifests/v1")
    response = api("post", "fit", json={"model_name": f"{fake_registry.host}/library/same"})
    assert response.status_code == 200 and response.get_json()["weights_bytes"] == sum(
        layer["size"] for layer in manifest["layers"])


def test_registry_error_status_is_a_502(api, fake_registry, registry_ready):
    fake_registry.put("v2/library/denied/manifests/latest.status", b"401")
    assert api("post", "fit", json={"model_name": f"{fake_registry.host}/library/denied"}).status_code == 502


def test_registry_with_an_untrusted_certificate_is_a_503(api, fake_registry, registry_ready, monkeypatch):
    fake_registry.add_model("library", "tls", "latest", tiny_gguf(tokens=10))
    monkeypatch.setenv("SSL_CERT_FILE", os.devnull)
    response = api("post", "fit", json={"model_name": f"{fake_registry.host}/library/tls"})
    assert response.status_code == 503 and fake_registry.host in response.get_json()["error"]


def test_registry_unreachable_is_a_503_naming_it(api, services, registry_ready, fake_registry):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    host = f"127.0.0.1:{port}"
    services.fit._registry.allowed += (host,)
    services.config = services.config.model_copy(update={"ollama_allowed_registries": (
        *services.config.ollama_allowed_registries, host)})
    response = api("post", "fit", json={"model_name": f"{host}/library/x"})
    assert response.status_code == 503 and host in response.get_json()["error"]


def test_registry_client_refuses_registries_not_allowed():
    from errors import BadRequestError
    from ollama_client.registry import RegistryClient

    with pytest.raises(BadRequestError, match="not allowed"):
        RegistryClient(["hf.co"]).model(parse_model_name("llama3.2"))


def test_registry_client_takes_an_injected_ca_bundle_and_keeps_namespace_and_port(fake_registry, monkeypatch):
    from ollama_client.registry import RegistryClient

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    manifest = fake_registry.add_model("acme", "tiny", "v2", tiny_gguf(tokens=10))
    client = RegistryClient([fake_registry.host], ca_bundle=str(fake_registry.cert))
    try:
        model = client.model(parse_model_name(f"{fake_registry.host}/acme/tiny:v2", [fake_registry.host]))
    finally:
        client.close()
    assert model.weights_bytes == sum(layer["size"] for layer in manifest["layers"])
    assert model.model_info["qwen2.block_count"] == 28 and model.model_info["qwen2.vocab_size"] == 10
    assert fake_registry.requests()[-2]["path"] == "/v2/acme/tiny/manifests/v2"
