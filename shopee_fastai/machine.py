"""The machine at hand as speed depends on it: CPU model, the instruction sets that change which kernels run,
the cores this process may use, and the threads that follow from them.

Every figure in docs/speed.md names the CPU it came from, because the same command runs several times
slower on another CPU generation. Bench scripts print `summary()` first; `shopee-fastai doctor` prints
all of it for a bug report. Reads /proc and cgroup files; only `report()` imports torch and ONNX Runtime.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import platform
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from . import __version__
from .config import CACHE_ENV, cache_dir

# What each reported feature means, as /proc/cpuinfo (x86) or its ARM "Features" line spells it.
FEATURES: dict[str, tuple[str, ...]] = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "VNNI": ("avx512_vnni", "avx_vnni"),  # int8 dot products: what makes int8 graphs fast on x86
    "BF16": ("avx512_bf16", "amx_bf16"),  # native bfloat16: what makes bf16 autocast pay on CPU
    "AMX": ("amx_tile",),
    "NEON": ("asimd", "neon"),
    "SVE": ("sve",),
    "I8MM": ("i8mm",),  # ARM's int8 matrix multiply
}
X86 = ("AVX2", "AVX-512", "VNNI", "BF16", "AMX")
ARM = ("NEON", "SVE", "I8MM", "BF16")
# AMD families as cpuid reports them; Zen 3 and Zen 4 share family 25, told apart by AVX-512.
AMD_FAMILIES = {23: "Zen/Zen 2", 26: "Zen 5"}


@dataclass(frozen=True)
class CPU:
    model: str
    arch: str  # platform.machine(): x86_64, aarch64, arm64
    flags: frozenset[str] = field(default_factory=frozenset)
    family: int | None = None
    model_number: int | None = None
    logical: int = 1  # CPUs the OS shows
    affinity: int = 1  # CPUs this process may be scheduled on
    quota: float | None = None  # the cgroup's CPU quota in cores, where one is set

    def has(self, feature: str) -> bool:
        return any(f in self.flags for f in FEATURES[feature])

    @property
    def int8_dot(self) -> bool:
        """Native int8 dot products (VNNI, ARM's I8MM): without them an int8 graph gains little and its AVX2
        kernels can saturate."""
        return self.has("VNNI") or self.has("I8MM")

    @property
    def generation(self) -> str:
        """A readable generation where cpuid alone tells it (virtual machines often hide the model name)."""
        if "AMD" in self.model and self.family is not None:
            if self.family == 25:
                return "Zen 4" if self.has("AVX-512") else "Zen 3"
            return AMD_FAMILIES.get(self.family, "")
        return ""

    @property
    def usable(self) -> int:
        """Cores this process can really use: its affinity, capped by a container's CPU quota."""
        cores = self.affinity
        if self.quota is not None:
            cores = min(cores, max(1, math.ceil(self.quota)))
        return max(1, cores)

    @property
    def name(self) -> str:
        gen = f", {self.generation}" if self.generation else ""
        fam = f" (family {self.family} model {self.model_number}{gen})" if self.family is not None else ""
        return f"{self.model}{fam}"

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The features worth reporting for this architecture."""
        return X86 if self.arch in ("x86_64", "AMD64", "i686") else ARM

    def features(self) -> str:
        """'AVX2 AVX-512 VNNI BF16, no AMX': the instruction sets that decide speed here."""
        have = [n for n in self.feature_names if self.has(n)]
        lack = [n for n in self.feature_names if not self.has(n)]
        return " ".join(have) + (f", no {' '.join(lack)}" if lack else "")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def _quota() -> float | None:
    """The cgroup (v2, else v1) CPU quota in cores; None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 else None
    except (OSError, ValueError):
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@lru_cache(maxsize=1)
def cpu() -> CPU:
    info = _cpuinfo()
    logical = os.cpu_count() or 1
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        affinity = logical
    model = info.get("model name") or info.get("Model") or platform.processor() or platform.machine() or "unknown CPU"
    flags = (info.get("flags") or info.get("Features") or "").split()
    return CPU(model=model, arch=platform.machine(), flags=frozenset(flags), family=_int(info.get("cpu family")),
               model_number=_int(info.get("model")), logical=logical, affinity=affinity, quota=_quota())


def threads() -> int:
    """Threads for compute: what the launcher set (torchrun gives each process OMP_NUM_THREADS), else the usable
    cores. A container's quota is below what os.cpu_count() shows, and threads beyond it only wait their turn."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return cpu().usable


def pin_threads() -> None:
    """Tell OpenMP (PyTorch) to use `threads()` when a CPU quota or affinity leaves fewer cores than the machine
    shows; must run before torch is imported. A user's OMP_NUM_THREADS stands."""
    c = cpu()
    if "OMP_NUM_THREADS" not in os.environ and c.usable < c.logical:
        os.environ["OMP_NUM_THREADS"] = str(c.usable)


def summary() -> str:
    """One line for the top of every measurement: which CPU, which instruction sets, how many threads."""
    c = cpu()
    quota = f", cgroup quota {c.quota:g}" if c.quota is not None else ""
    return (f"CPU: {c.name}; {c.features()}; {c.usable} usable core(s) of {c.logical}{quota}; "
            f"{threads()} compute thread(s)")


def _version(module: str) -> str:
    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"


def _runtimes() -> dict[str, object]:
    """torch and ONNX Runtime as they run here. Imported only now, and each failure reported rather than raised:
    a bug report must print on a broken install too."""
    out: dict[str, object] = {}
    try:
        import torch  # ~2 s: `doctor` alone needs it, and the CLI imports this module for pin_threads

        out["torch_threads"] = torch.get_num_threads()
        out["torch_kernels"] = torch.backends.cpu.get_cpu_capability()
        out["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        out["torch_cuda_build"] = torch.version.cuda or "none"
    except Exception as e:  # an install that cannot import torch is what the report is for
        out["torch_error"] = f"{type(e).__name__}: {e}"
    try:
        import onnxruntime as ort  # `doctor` alone needs it, as torch above

        out["onnxruntime_providers"] = ort.get_available_providers()
    except Exception as e:
        out["onnxruntime_error"] = f"{type(e).__name__}: {e}"
    return out


def report() -> dict[str, object]:
    """Everything `shopee-fastai doctor` prints: what a bug report about speed or a crash needs."""
    c = cpu()
    cache = cache_dir()
    return {
        "shopee_fastai": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu": c.name, "arch": c.arch, "features": {n: c.has(n) for n in c.feature_names},
        "int8_dot": c.int8_dot,
        "logical_cpus": c.logical, "affinity_cpus": c.affinity, "cgroup_quota": c.quota, "usable_cores": c.usable,
        "threads": threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "versions": {m: _version(m) for m in ("torch", "torchvision", "fastai", "timm", "onnxruntime", "onnx", "numpy",
                                              "pillow", "faiss-cpu", "pytorch-metric-learning", "gradio")},
        **_runtimes(),
        "cache": str(cache), "cache_env": CACHE_ENV, "cache_exists": cache.is_dir(),
    }


def format_report(r: dict[str, object]) -> str:
    feats = " ".join(f"{k} {'yes' if v else 'no'}" for k, v in r["features"].items())  # type: ignore[union-attr]
    quota = r["cgroup_quota"] if r["cgroup_quota"] is not None else "none"
    lines = [
        f"shopee-fastai {r['shopee_fastai']}, Python {r['python']}, {r['platform']}",
        f"CPU: {r['cpu']} [{r['arch']}]",
        f"  {feats}",
        f"  cores: {r['logical_cpus']} shown, {r['affinity_cpus']} in this process's affinity, cgroup quota {quota}: "
        f"{r['usable_cores']} usable",
        f"threads: {r['threads']} for compute (OMP_NUM_THREADS {r['OMP_NUM_THREADS'] or 'unset'}); torch uses "
        f"{r.get('torch_threads', '?')}, kernels {r.get('torch_kernels', '?')}",
        f"load: {r['load_1min']} over the last minute" + (" (other work shares these cores: training can run 2x slower or more; "
                                                          "OMP_WAIT_POLICY=PASSIVE helps)" if (r["load_1min"] or 0) >= r["usable_cores"] else ""),
        "GPU: " + (", ".join(r["cuda"]) if r.get("cuda") else f"none (torch built for CUDA {r.get('torch_cuda_build', '?')})"),  # type: ignore[arg-type]
        "ONNX Runtime providers: " + ", ".join(r.get("onnxruntime_providers", [])),  # type: ignore[arg-type]
        f"on CPU: fp32 by default; bf16 autocast {'available (native BF16)' if r['features'].get('BF16') else 'refused (no native BF16)'}; "  # type: ignore[union-attr]
        f"int8 graphs {'with native int8 dot products' if r['int8_dot'] else 'without VNNI (opt-in; little faster than fp32 and less faithful: docs/speed.md)'}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),  # type: ignore[union-attr]
        f"cache: {r['cache']} ({'exists' if r['cache_exists'] else 'not created yet'}; {r['cache_env']} moves it)",
    ]
    lines += [f"error: {r[k]}" for k in ("torch_error", "onnxruntime_error") if k in r]
    return "\n".join(lines)


@lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's malloc_trim, or None off glibc (macOS, musl, Windows); looked up on first use, since finding libc
    runs `ldconfig` (~25 ms) and every command imports this module."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim if sys.platform.startswith("linux") else None
    except (OSError, AttributeError):
        return None


@contextmanager
def freed_memory_returned(every: float):
    """While the body runs, hand the heap's freed pages back to the system every `every` seconds.

    glibc keeps freed pages for reuse, and under fastai's head training it does not reuse them: at Shopee's
    size RSS grew ~0.2 GB an epoch, 5 GB over one fold, while what was alive stayed under 2 GB.
    """
    malloc_trim = _malloc_trim()
    if malloc_trim is None:
        yield
        return
    stop = threading.Event()

    def trim() -> None:
        while not stop.wait(every):
            malloc_trim(0)  # ctypes lets go of the GIL: the body runs on meanwhile

    trimmer = threading.Thread(target=trim, name="malloc-trim", daemon=True)
    trimmer.start()
    try:
        yield
    finally:
        stop.set()
        trimmer.join()
