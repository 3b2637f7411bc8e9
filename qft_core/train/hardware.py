"""What the training machine offers: GPUs, how they are linked, NUMA placement, CPU, RAM and software versions."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import psutil
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from qft_core.train.attention import FLEX_MIN_CAPABILITY, flex_unavailable_reason
from qft_core.train.compiler import compile_unavailable_reason

GIB = 1024**3

LinkKind = Literal["nvlink", "pcie", "other"]

# nvidia-smi's names for PCIe paths, nearest first (its legend); SOC is the pre-2016 spelling of SYS.
PCIE_LABELS = ("PIX", "PXB", "PHB", "NODE", "SYS", "SOC")

# NVML's nvmlGpuTopologyLevel_t values, mapped to the labels nvidia-smi prints for them.
NVML_TOPOLOGY_LABELS = {0: "X", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_DEVICE_COLUMN = re.compile(r"^(GPU|NIC)\d+$")
_NVLINK_LABEL = re.compile(r"^NV(\d+)$")


class TopologyParseError(ValueError):
    """`nvidia-smi topo -m` or `--query-gpu` output that cannot be read; the message names the line."""


class HardwareRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GpuInfo(HardwareRecord):
    index: int = Field(ge=0)
    name: str
    memory_gib: float = Field(ge=0)
    compute_capability: str
    pci_bus_id: str | None = None
    numa_node: int | None = None
    cpu_affinity: str | None = None

    @property
    def supports_bf16(self) -> bool:
        return int(self.compute_capability.split(".")[0]) >= 8


class GpuLink(HardwareRecord):
    """How two GPUs talk: over NVLink (`label` NV#, `nvlinks` bonded links) or a PCIe path (PIX … SYS)."""

    a: int
    b: int
    kind: LinkKind
    label: str
    nvlinks: int = Field(0, ge=0)


class GpuTopology(HardwareRecord):
    """What `nvidia-smi topo -m` says: the links between GPUs and each GPU's CPU and NUMA affinity."""

    gpu_count: int
    links: list[GpuLink] = Field(default_factory=list)
    numa_nodes: dict[int, int | None] = Field(default_factory=dict)
    cpu_affinity: dict[int, str | None] = Field(default_factory=dict)


class HardwareProfile(HardwareRecord):
    """One machine as training sees it; a machine without GPUs is a valid profile (device 'cpu')."""

    hostname: str
    gpus: list[GpuInfo] = Field(default_factory=list)
    links: list[GpuLink] = Field(default_factory=list)
    interconnect: Literal["nvlink", "pcie", "mixed", "none"] | None = None
    topology_source: Literal["nvml", "nvidia-smi", "torch", "none"] = "none"
    physical_cores: int = Field(ge=1)
    logical_cores: int = Field(ge=1)
    ram_gib: float = Field(ge=0)
    # RAM free for new work when profiled (the OS's estimate, page cache it can drop included); None in profiles
    # written before it was recorded.
    ram_available_gib: float | None = Field(None, ge=0)
    torch_version: str
    cuda_version: str | None = None
    nccl_version: str | None = None
    bf16_supported: bool = False
    # The engine's fast path on these GPUs (fast_path.choose_fast_path): torch.compile builds GPU kernels here
    # (compiled decoder layers and loss kernel), and flex attention trains packed rows. False when unknown, which
    # makes the plan assume the eager path's larger activations.
    compiled_kernels: bool = False
    flex_attention: bool = False
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _derive_interconnect(self) -> HardwareProfile:
        if self.interconnect is None:
            self.interconnect = interconnect_of(len(self.gpus), self.links)
        return self

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    @property
    def device(self) -> Literal["cuda", "cpu"]:
        return "cuda" if self.gpus else "cpu"

    @property
    def min_gpu_memory_gib(self) -> float:
        return min((gpu.memory_gib for gpu in self.gpus), default=0.0)

    def to_markdown(self) -> str:
        lines = [
            f"## Hardware profile: {self.hostname}",
            "",
            f"- device: **{self.device}**, {self.gpu_count} GPU(s), interconnect **{self.interconnect}**"
            f" (topology from {self.topology_source})",
            f"- CPU: {self.physical_cores} physical / {self.logical_cores} logical cores; RAM {self.ram_gib:.1f} GiB"
            + (f" ({self.ram_available_gib:.1f} available)" if self.ram_available_gib is not None else ""),
            f"- torch {self.torch_version} (built for CUDA {self.cuda_version or '-'},"
            f" NCCL {self.nccl_version or '-'});"
            f" bf16 {'supported' if self.bf16_supported else 'not supported'}",
        ]
        if self.gpus:
            lines += [
                f"- fast path: compiled kernels {'yes' if self.compiled_kernels else 'no'},"
                f" flex attention {'yes' if self.flex_attention else 'no'}",
                "",
                "| GPU | name | memory GiB | compute capability | PCI bus | NUMA node | CPU affinity |",
                "|---|---|---|---|---|---|---|",
            ]
            for gpu in self.gpus:
                lines.append(
                    f"| {gpu.index} | {gpu.name} | {gpu.memory_gib:.1f} | {gpu.compute_capability} "
                    f"| {gpu.pci_bus_id or '-'} | {_dash(gpu.numa_node)} | {gpu.cpu_affinity or '-'} |"
                )
        if self.links:
            lines += ["", "| GPU pair | link |", "|---|---|"]
            lines += [f"| {link.a}–{link.b} | {link.label} ({link.kind}) |" for link in self.links]
        if self.notes:
            lines += ["", *(f"- note: {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"


def interconnect_of(gpu_count: int, links: list[GpuLink]) -> Literal["nvlink", "pcie", "mixed", "none"]:
    """NVLink only if every GPU pair has it; 'none' for fewer than two GPUs or unknown links."""
    if gpu_count < 2 or not links:
        return "none"
    kinds = {link.kind for link in links}
    if kinds == {"nvlink"}:
        return "nvlink"
    return "mixed" if "nvlink" in kinds else "pcie"


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def classify_link(label: str) -> tuple[LinkKind, int]:
    """An nvidia-smi matrix cell as (kind, bonded NVLink count)."""
    match = _NVLINK_LABEL.match(label)
    if match:
        return "nvlink", int(match.group(1))
    return ("pcie" if label in PCIE_LABELS else "other"), 0


def _split_cells(line: str) -> list[str]:
    # nvidia-smi separates cells by tabs; copies of its output often turn them into runs of spaces.
    return [cell.strip() for cell in re.split(r"\t| {2,}", line) if cell.strip()]


def _optional_int(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    return int(text)


def parse_topology_matrix(text: str) -> GpuTopology:
    """Read `nvidia-smi topo -m`: GPU-to-GPU links (upper triangle) and each GPU's CPU/NUMA affinity."""
    lines = [_ANSI_ESCAPE.sub("", line) for line in text.splitlines()]
    header_at = next((i for i, line in enumerate(lines) if _split_cells(line)[:1] == ["GPU0"]), None)
    if header_at is None:
        raise TopologyParseError("nvidia-smi topo -m: no header line starting with GPU0")
    columns = [cell for cell in _split_cells(lines[header_at]) if _DEVICE_COLUMN.match(cell)]
    gpu_columns = [i for i, name in enumerate(columns) if name.startswith("GPU")]
    matrix: dict[int, list[str]] = {}
    numa_nodes: dict[int, int | None] = {}
    cpu_affinity: dict[int, str | None] = {}
    for number, line in enumerate(lines[header_at + 1 :], start=header_at + 2):
        cells = _split_cells(line)
        if not cells or cells[0].startswith("Legend"):
            break
        if not cells[0].startswith("GPU"):
            continue
        if len(cells) < 1 + len(columns):
            raise TopologyParseError(
                f"nvidia-smi topo -m line {number}: {len(cells) - 1} cells for {len(columns)} devices: {line!r}"
            )
        gpu = int(cells[0][3:])
        matrix[gpu] = cells[1 : 1 + len(columns)]
        affinity = cells[1 + len(columns) :]
        cpu_affinity[gpu] = affinity[0] if affinity and affinity[0] != "N/A" else None
        numa_nodes[gpu] = _optional_int(affinity[1]) if len(affinity) > 1 else None
    if sorted(matrix) != list(range(len(gpu_columns))):
        raise TopologyParseError(f"nvidia-smi topo -m: GPU rows {sorted(matrix)} do not match the header {columns}")
    links = []
    for a in range(len(gpu_columns)):
        for b in range(a + 1, len(gpu_columns)):
            label = matrix[a][gpu_columns[b]]
            kind, nvlinks = classify_link(label)
            links.append(GpuLink(a=a, b=b, kind=kind, label=label, nvlinks=nvlinks))
    return GpuTopology(gpu_count=len(gpu_columns), links=links, numa_nodes=numa_nodes, cpu_affinity=cpu_affinity)


GPU_QUERY_FIELDS = "index,name,memory.total,compute_cap,pci.bus_id"


def parse_gpu_query(text: str) -> list[GpuInfo]:
    """Read `nvidia-smi --query-gpu=index,name,memory.total,compute_cap,pci.bus_id --format=csv,noheader,nounits`."""
    gpus = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != 5:
            raise TopologyParseError(f"nvidia-smi --query-gpu line {number}: expected 5 fields, got {line!r}")
        index, name, memory_mib, capability, bus_id = cells
        try:
            gpus.append(
                GpuInfo(
                    index=int(index),
                    name=name,
                    memory_gib=float(memory_mib) / 1024,
                    compute_capability=capability,
                    pci_bus_id=normalize_bus_id(bus_id),
                )
            )
        except ValueError as error:
            raise TopologyParseError(f"nvidia-smi --query-gpu line {number}: {error}") from None
    return gpus


def normalize_bus_id(bus_id: str) -> str:
    """NVML/nvidia-smi write an 8-digit PCI domain ('00000000:18:00.0'); sysfs uses 4 digits, lower case."""
    parts = bus_id.strip().lower().split(":")
    if len(parts) == 3:
        parts[0] = parts[0][-4:].rjust(4, "0")
    return ":".join(parts)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def nvml_gpus_and_links(nvml: Any) -> tuple[list[GpuInfo], list[GpuLink]]:
    """GPUs and their pairwise links through NVML (the `pynvml` module, initialised and shut down here)."""
    nvml.nvmlInit()
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        gpus = []
        for index, handle in enumerate(handles):
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_gib=nvml.nvmlDeviceGetMemoryInfo(handle).total / GIB,
                    compute_capability=f"{major}.{minor}",
                    pci_bus_id=normalize_bus_id(_text(nvml.nvmlDeviceGetPciInfo(handle).busId)),
                )
            )
        bus_ids = {gpu.pci_bus_id: gpu.index for gpu in gpus}
        peers = [_nvlink_peers(nvml, handle) for handle in handles]
        links = []
        for a in range(len(handles)):
            for b in range(a + 1, len(handles)):
                direct = peers[a].get(gpus[b].pci_bus_id, 0)
                # Behind an NVSwitch the remote end of every link is the switch, not the peer GPU.
                switched = sum(n for bus, n in peers[a].items() if bus not in bus_ids)
                nvlinks = direct or (switched if _nvlink_p2p(nvml, handles[a], handles[b]) else 0)
                if nvlinks:
                    links.append(GpuLink(a=a, b=b, kind="nvlink", label=f"NV{nvlinks}", nvlinks=nvlinks))
                else:
                    level = nvml.nvmlDeviceGetTopologyCommonAncestor(handles[a], handles[b])
                    label = NVML_TOPOLOGY_LABELS.get(int(level), f"level{level}")
                    links.append(GpuLink(a=a, b=b, kind=classify_link(label)[0], label=label))
        return gpus, links
    finally:
        nvml.nvmlShutdown()


def _nvlink_peers(nvml: Any, handle: object) -> dict[str, int]:
    """Active NVLinks of one GPU counted by the PCI bus id at their far end."""
    peers: dict[str, int] = {}
    for link in range(nvml.NVML_NVLINK_MAX_LINKS):
        try:
            if nvml.nvmlDeviceGetNvLinkState(handle, link) != nvml.NVML_FEATURE_ENABLED:
                continue
            remote = normalize_bus_id(_text(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId))
        except nvml.NVMLError:
            continue  # links a GPU model does not have answer 'not supported'
        peers[remote] = peers.get(remote, 0) + 1
    return peers


def _nvlink_p2p(nvml: Any, a: object, b: object) -> bool:
    try:
        status = nvml.nvmlDeviceGetP2PStatus(a, b, nvml.NVML_P2P_CAPS_INDEX_NVLINK)
    except nvml.NVMLError:
        return False
    return status == nvml.NVML_P2P_STATUS_OK


def sysfs_numa_node(bus_id: str, root: Path = Path("/sys/bus/pci/devices")) -> int | None:
    """The NUMA node the kernel reports for a PCI device; -1 (no NUMA) and absent files give None."""
    try:
        node = int((root / normalize_bus_id(bus_id) / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


def select_visible(
    gpus: list[GpuInfo], links: list[GpuLink], visible: str | None
) -> tuple[list[GpuInfo], list[GpuLink], str | None]:
    """Keep the GPUs CUDA_VISIBLE_DEVICES names, renumbered as CUDA numbers them; returns a note if it can't."""
    if visible is None:
        return gpus, links, None
    names = [name.strip() for name in visible.split(",") if name.strip()]
    if not all(name.isdigit() for name in names):
        return gpus, links, f"CUDA_VISIBLE_DEVICES={visible!r} names devices by UUID; all GPUs are listed"
    by_index = {gpu.index: gpu for gpu in gpus}
    chosen = [int(name) for name in names if int(name) in by_index]
    renumber = {old: new for new, old in enumerate(chosen)}
    kept_gpus = [by_index[old].model_copy(update={"index": new}) for new, old in enumerate(chosen)]
    kept_links = []
    for link in links:
        if link.a in renumber and link.b in renumber:
            a, b = sorted((renumber[link.a], renumber[link.b]))
            kept_links.append(link.model_copy(update={"a": a, "b": b}))
    return kept_gpus, sorted(kept_links, key=lambda link: (link.a, link.b)), None


def _run(args: list[str]) -> str | None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _import_nvml() -> ModuleType | None:
    """The `pynvml` module of nvidia-ml-py, a declared dependency; None where an install left it out."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _discover_gpus(notes: list[str]) -> tuple[list[GpuInfo], list[GpuLink], str]:
    """GPUs and links from NVML, else nvidia-smi, else torch; `nvidia-smi topo -m` adds CPU and NUMA affinity."""
    gpus: list[GpuInfo] = []
    links: list[GpuLink] = []
    source = "none"
    nvml = _import_nvml()
    if nvml is not None:
        try:
            gpus, links = nvml_gpus_and_links(nvml)
            source = "nvml"
        except nvml.NVMLError_LibraryNotFound:
            pass  # no NVIDIA driver on this machine: a CPU machine, nothing worth a note
        except nvml.NVMLError as error:
            notes.append(f"NVML failed ({error}); falling back to nvidia-smi")
    topology = _smi_topology(notes) if shutil.which("nvidia-smi") else None
    if not gpus and shutil.which("nvidia-smi"):
        query = _run(["nvidia-smi", f"--query-gpu={GPU_QUERY_FIELDS}", "--format=csv,noheader,nounits"])
        if query is not None:
            gpus, links, source = parse_gpu_query(query), topology.links if topology else [], "nvidia-smi"
    if not gpus and torch.cuda.is_available():
        notes.append("neither NVML nor nvidia-smi answered: GPU links unknown")
        return [_torch_gpu(index) for index in range(torch.cuda.device_count())], [], "torch"
    if topology is not None:
        gpus = [
            gpu.model_copy(
                update={
                    "numa_node": topology.numa_nodes.get(gpu.index),
                    "cpu_affinity": topology.cpu_affinity.get(gpu.index),
                }
            )
            for gpu in gpus
        ]
    return gpus, links, source


def _smi_topology(notes: list[str]) -> GpuTopology | None:
    text = _run(["nvidia-smi", "topo", "-m"])
    if text is None:
        notes.append("nvidia-smi topo -m failed: no CPU/NUMA affinity from it")
        return None
    try:
        return parse_topology_matrix(text)
    except TopologyParseError as error:
        notes.append(str(error))
        return None


def _torch_gpu(index: int) -> GpuInfo:
    props = torch.cuda.get_device_properties(index)
    return GpuInfo(
        index=index,
        name=props.name,
        memory_gib=props.total_memory / GIB,
        compute_capability=f"{props.major}.{props.minor}",
        pci_bus_id=f"{props.pci_domain_id:04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0",
    )


def _nccl_version() -> str | None:
    if not torch.version.cuda:
        return None
    try:
        version = torch.cuda.nccl.version()
    except (RuntimeError, AttributeError, ImportError):
        return None
    return ".".join(str(part) for part in version) if isinstance(version, tuple) else str(version)


def profile_hardware() -> HardwareProfile:
    """Profile this machine; GPUs are the ones this process's torch can use."""
    notes: list[str] = []
    gpus, links, source = _discover_gpus(notes)
    gpus = [
        gpu
        if gpu.numa_node is not None or gpu.pci_bus_id is None
        else gpu.model_copy(update={"numa_node": sysfs_numa_node(gpu.pci_bus_id)})
        for gpu in gpus
    ]
    gpus, links, note = select_visible(gpus, links, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if note:
        notes.append(note)
    if gpus and not torch.cuda.is_available():
        notes.append(f"{len(gpus)} GPU(s) present but torch {torch.__version__} cannot use CUDA: profiled as CPU")
        gpus, links = [], []
    elif gpus and torch.cuda.device_count() != len(gpus):
        notes.append(f"torch sees {torch.cuda.device_count()} GPU(s), the driver lists {len(gpus)}")
    compiled, flex = _fast_path_support(gpus, notes)
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    physical = psutil.cpu_count(logical=False) or logical
    memory = psutil.virtual_memory()
    return HardwareProfile(
        hostname=platform.node() or "localhost",
        gpus=gpus,
        links=links,
        topology_source=source if gpus else "none",
        physical_cores=min(physical, logical),
        logical_cores=logical,
        ram_gib=memory.total / GIB,
        ram_available_gib=memory.available / GIB,
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        nccl_version=_nccl_version(),
        bf16_supported=bool(gpus) and all(gpu.supports_bf16 for gpu in gpus),
        compiled_kernels=compiled,
        flex_attention=flex,
        notes=notes,
    )


def _fast_path_support(gpus: list[GpuInfo], notes: list[str]) -> tuple[bool, bool]:
    """(compiled kernels, flex attention) on these GPUs, asked the way the engine asks; reasons go to `notes`."""
    if not gpus:
        return False, False
    device = torch.device("cuda", 0)
    compile_reason = compile_unavailable_reason(device)
    flex_reason = flex_unavailable_reason(device)
    oldest = min(tuple(int(part) for part in gpu.compute_capability.split(".")) for gpu in gpus)
    if flex_reason is None and oldest < FLEX_MIN_CAPABILITY:
        flex_reason = f"flex attention needs compute capability {FLEX_MIN_CAPABILITY} on every GPU, one has {oldest}"
    reason = compile_reason or flex_reason
    if reason:
        notes.append(f"fast path: {reason}")
    return compile_reason is None, flex_reason is None
