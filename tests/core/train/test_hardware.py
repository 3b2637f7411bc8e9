import pynvml
import pytest
import torch

from qft_core.train import hardware
from qft_core.train.compiler import compile_unavailable_reason
from qft_core.train.hardware import (
    GpuInfo,
    GpuLink,
    HardwareProfile,
    TopologyParseError,
    nvml_gpus_and_links,
    parse_gpu_query,
    parse_topology_matrix,
    profile_hardware,
    select_visible,
    sysfs_numa_node,
)

# An HGX-style box as `nvidia-smi topo -m` prints it: underlined header, tab-separated cells, two NICs,
# a double tab before the GPU NUMA ID column.
FOUR_NVLINK_GPUS = (
    "\t\x1b[4mGPU0\tGPU1\tGPU2\tGPU3\tNIC0\tNIC1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
    "GPU0\t X \tNV18\tNV18\tNV18\tPXB\tSYS\t0-47,96-143\t0\t\tN/A\n"
    "GPU1\tNV18\t X \tNV18\tNV18\tPXB\tSYS\t0-47,96-143\t0\t\tN/A\n"
    "GPU2\tNV18\tNV18\t X \tNV18\tSYS\tPXB\t48-95,144-191\t1\t\tN/A\n"
    "GPU3\tNV18\tNV18\tNV18\t X \tSYS\tPXB\t48-95,144-191\t1\t\tN/A\n"
    "NIC0\tPXB\tPXB\tSYS\tSYS\t X \tSYS\t\t\t\t\n"
    "NIC1\tSYS\tSYS\tPXB\tPXB\tSYS\t X \t\t\t\t\n"
    "\n"
    "Legend:\n"
    "\n"
    "  X    = Self\n"
    "  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)\n"
    "  NV#  = Connection traversing a bonded set of # NVLinks\n"
    "\n"
    "NIC Legend:\n"
    "\n"
    "  NIC0: mlx5_0\n"
    "  NIC1: mlx5_1\n"
)

# Read off a two-H200 machine (driver 580), byte for byte up to the legend.
TWO_H200 = (
    "\t\x1b[4mGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
    "GPU0\t X \tNV18\t0-31\t0\t\tN/A\n"
    "GPU1\tNV18\t X \t0-31\t0\t\tN/A\n"
    "\n"
    "Legend:\n"
    "\n"
    "  X    = Self\n"
)

FOUR_PCIE_GPUS = (
    "\tGPU0\tGPU1\tGPU2\tGPU3\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\n"
    "GPU0\t X \tPIX\tPHB\tSYS\t0-15\t0\t\tN/A\n"
    "GPU1\tPIX\t X \tPHB\tSYS\t0-15\t0\t\tN/A\n"
    "GPU2\tPHB\tPHB\t X \tSYS\t0-15\t0\t\tN/A\n"
    "GPU3\tSYS\tSYS\tSYS\t X \t16-31\t1\t\tN/A\n"
    "\n"
    "Legend:\n"
)


def test_nvlink_matrix_gives_six_nv18_links_and_numa_per_gpu():
    topology = parse_topology_matrix(FOUR_NVLINK_GPUS)

    assert topology.gpu_count == 4
    assert [(link.a, link.b) for link in topology.links] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert {(link.kind, link.label, link.nvlinks) for link in topology.links} == {("nvlink", "NV18", 18)}
    assert topology.numa_nodes == {0: 0, 1: 0, 2: 1, 3: 1}
    assert topology.cpu_affinity == {0: "0-47,96-143", 1: "0-47,96-143", 2: "48-95,144-191", 3: "48-95,144-191"}


def test_real_two_gpu_output_parses():
    topology = parse_topology_matrix(TWO_H200)

    assert [(link.a, link.b, link.label, link.kind) for link in topology.links] == [(0, 1, "NV18", "nvlink")]
    assert topology.numa_nodes == {0: 0, 1: 0}
    assert topology.cpu_affinity == {0: "0-31", 1: "0-31"}


def test_pcie_matrix_keeps_each_pair_label():
    topology = parse_topology_matrix(FOUR_PCIE_GPUS)

    labels = {(link.a, link.b): link.label for link in topology.links}
    assert labels == {(0, 1): "PIX", (0, 2): "PHB", (0, 3): "SYS", (1, 2): "PHB", (1, 3): "SYS", (2, 3): "SYS"}
    assert {link.kind for link in topology.links} == {"pcie"}
    assert topology.numa_nodes == {0: 0, 1: 0, 2: 0, 3: 1}


def test_matrix_copied_with_spaces_instead_of_tabs_parses_the_same():
    spaced = FOUR_NVLINK_GPUS.replace("\t", "    ")

    assert parse_topology_matrix(spaced) == parse_topology_matrix(FOUR_NVLINK_GPUS)


def test_single_gpu_matrix_has_no_links():
    topology = parse_topology_matrix("\tGPU0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\nGPU0\t X \t0-15\tN/A\t\tN/A\n")

    assert topology.gpu_count == 1
    assert topology.links == []
    assert topology.numa_nodes == {0: None}


def test_matrix_without_header_is_rejected():
    with pytest.raises(TopologyParseError, match="no header"):
        parse_topology_matrix("No devices were found\n")


def test_matrix_with_short_row_names_the_line():
    broken = "\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tNV4\t0-7\nGPU1\tNV4\n"

    with pytest.raises(TopologyParseError, match="line 3"):
        parse_topology_matrix(broken)


def _profile(gpu_count: int, links: list[GpuLink]) -> HardwareProfile:
    gpus = [GpuInfo(index=i, name="H100", memory_gib=80, compute_capability="9.0") for i in range(gpu_count)]
    return HardwareProfile(
        hostname="fake",
        gpus=gpus,
        links=links,
        physical_cores=8,
        logical_cores=16,
        ram_gib=64,
        torch_version="2.5",
    )


def test_interconnect_is_nvlink_pcie_or_mixed_from_the_links():
    nvlink = parse_topology_matrix(FOUR_NVLINK_GPUS).links
    pcie = parse_topology_matrix(FOUR_PCIE_GPUS).links

    assert _profile(4, nvlink).interconnect == "nvlink"
    assert _profile(4, pcie).interconnect == "pcie"
    assert _profile(4, nvlink[:3] + pcie[3:]).interconnect == "mixed"
    assert _profile(1, []).interconnect == "none"


def test_gpu_query_gives_memory_in_gib_and_sysfs_bus_id():
    gpus = parse_gpu_query(
        "0, NVIDIA H100 80GB HBM3, 81559, 9.0, 00000000:18:00.0\n1, NVIDIA A10, 23028, 8.6, 00000000:3B:00.0\n"
    )

    assert [gpu.name for gpu in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA A10"]
    assert gpus[0].memory_gib == pytest.approx(81559 / 1024)
    assert [gpu.pci_bus_id for gpu in gpus] == ["0000:18:00.0", "0000:3b:00.0"]
    assert [gpu.supports_bf16 for gpu in gpus] == [True, True]


def test_gpu_query_with_missing_field_names_the_line():
    with pytest.raises(TopologyParseError, match="line 2"):
        parse_gpu_query("0, H100, 81559, 9.0, 00000000:18:00.0\n1, H100, 81559\n")


def test_sysfs_numa_node_reads_the_device_file(tmp_path):
    (tmp_path / "0000:18:00.0").mkdir()
    (tmp_path / "0000:18:00.0" / "numa_node").write_text("1\n")
    (tmp_path / "0000:3b:00.0").mkdir()
    (tmp_path / "0000:3b:00.0" / "numa_node").write_text("-1\n")

    assert sysfs_numa_node("00000000:18:00.0", root=tmp_path) == 1
    assert sysfs_numa_node("00000000:3B:00.0", root=tmp_path) is None
    assert sysfs_numa_node("0000:99:00.0", root=tmp_path) is None


def test_cuda_visible_devices_renumbers_gpus_and_links():
    profile = _profile(4, parse_topology_matrix(FOUR_PCIE_GPUS).links)

    gpus, links, note = select_visible(profile.gpus, profile.links, "3,0")

    assert note is None
    assert [gpu.index for gpu in gpus] == [0, 1]
    assert [(link.a, link.b, link.label) for link in links] == [(0, 1, "SYS")]
    assert select_visible(profile.gpus, profile.links, "")[0] == []
    assert select_visible(profile.gpus, profile.links, "GPU-1234")[2] is not None


class FakeNvml:
    """Three GPUs: 0 and 1 joined by 12 direct NVLinks, 2 reachable only over PCIe (SYS)."""

    NVML_NVLINK_MAX_LINKS = 18
    NVML_FEATURE_ENABLED = 1
    NVML_P2P_CAPS_INDEX_NVLINK = 4
    NVML_P2P_STATUS_OK = 0

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 (pynvml's name)
        pass

    class _Pci:
        def __init__(self, bus_id):
            self.busId = bus_id

    class _Memory:
        total = 80 * 1024**3

    BUS = ["00000000:18:00.0", "00000000:2A:00.0", "00000000:9A:00.0"]

    def __init__(self):
        self.initialised = False

    def nvmlInit(self):
        self.initialised = True

    def nvmlShutdown(self):
        self.initialised = False

    def nvmlDeviceGetCount(self):
        return 3

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return self._Memory()

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return 9, 0

    def nvmlDeviceGetPciInfo(self, handle):
        return self._Pci(self.BUS[handle])

    def nvmlDeviceGetNvLinkState(self, handle, link):
        if handle == 2 or link >= 12:
            raise self.NVMLError("not supported")
        return self.NVML_FEATURE_ENABLED

    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle, link):
        return self._Pci(self.BUS[1 - handle])

    def nvmlDeviceGetP2PStatus(self, a, b, index):
        return self.NVML_P2P_STATUS_OK if {a, b} == {0, 1} else 2

    def nvmlDeviceGetTopologyCommonAncestor(self, a, b):
        return 50


def test_nvml_counts_direct_nvlinks_and_falls_back_to_pcie_level():
    nvml = FakeNvml()

    gpus, links = nvml_gpus_and_links(nvml)

    assert [gpu.pci_bus_id for gpu in gpus] == ["0000:18:00.0", "0000:2a:00.0", "0000:9a:00.0"]
    assert [gpu.memory_gib for gpu in gpus] == [80.0, 80.0, 80.0]
    assert [(link.a, link.b, link.kind, link.label) for link in links] == [
        (0, 1, "nvlink", "NV12"),
        (0, 2, "pcie", "SYS"),
        (1, 2, "pcie", "SYS"),
    ]
    assert not nvml.initialised


def test_fake_nvml_has_only_names_the_declared_nvml_library_has():
    used = [name for name in vars(FakeNvml) if name.lower().startswith("nvml")]

    assert len(used) == 18  # 4 constants, 2 error types, 12 functions
    assert [name for name in used if not hasattr(pynvml, name)] == []
    assert issubclass(pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError)


def test_gpus_and_links_come_from_nvml_when_the_library_answers(monkeypatch):
    monkeypatch.setattr(hardware, "_import_nvml", FakeNvml)
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)  # no nvidia-smi either
    notes = []

    gpus, links, source = hardware._discover_gpus(notes)

    assert source == "nvml"
    assert [(gpu.index, gpu.name, gpu.compute_capability) for gpu in gpus] == [
        (index, "NVIDIA H100 80GB HBM3", "9.0") for index in range(3)
    ]
    assert [link.label for link in links] == ["NV12", "SYS", "SYS"]
    assert notes == []


class NoDriverNvml(FakeNvml):
    def nvmlInit(self):
        raise self.NVMLError_LibraryNotFound("NVML Shared Library Not Found")


class FailingDriverNvml(FakeNvml):
    def nvmlInit(self):
        raise self.NVMLError("Driver Not Loaded")


@pytest.mark.parametrize(
    ("library", "expected_notes"),
    [
        (NoDriverNvml, []),
        (FailingDriverNvml, ["NVML failed (Driver Not Loaded); falling back to nvidia-smi"]),
    ],
)
def test_machine_without_nvidia_driver_is_profiled_silently_and_a_failing_driver_is_noted(
    monkeypatch, library, expected_notes
):
    monkeypatch.setattr(hardware, "_import_nvml", library)
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
    notes = []

    assert hardware._discover_gpus(notes) == ([], [], "none")
    assert notes == expected_notes


def test_profile_of_this_machine_is_valid_and_round_trips():
    profile = profile_hardware()

    assert profile.physical_cores >= 1 and profile.logical_cores >= profile.physical_cores
    assert profile.ram_gib > 0
    assert profile.device == ("cuda" if profile.gpus else "cpu")
    assert profile.bf16_supported == (bool(profile.gpus) and all(gpu.supports_bf16 for gpu in profile.gpus))
    assert HardwareProfile.model_validate_json(profile.model_dump_json()) == profile
    assert f"device: **{profile.device}**" in profile.to_markdown()


def test_profile_records_the_fast_path_the_engine_can_use_here():
    profile = profile_hardware()

    compiles = bool(profile.gpus) and compile_unavailable_reason(torch.device("cuda", 0)) is None
    assert profile.compiled_kernels == compiles
    assert profile.flex_attention <= profile.compiled_kernels  # flex attention needs compiled kernels
    if profile.gpus and not (profile.compiled_kernels and profile.flex_attention):
        assert any(note.startswith("fast path: ") for note in profile.notes)


def test_profile_written_before_the_fast_path_fields_reads_as_eager():
    old = _profile(1, []).model_dump(exclude={"compiled_kernels", "flex_attention"})

    profile = HardwareProfile.model_validate(old)

    assert (profile.compiled_kernels, profile.flex_attention) == (False, False)
    assert "fast path: compiled kernels no, flex attention no" in profile.to_markdown()


def test_markdown_lists_every_gpu_and_link():
    profile = _profile(4, parse_topology_matrix(FOUR_NVLINK_GPUS).links)

    markdown = profile.to_markdown()

    assert markdown.count("| H100 |") == 4
    assert markdown.count("NV18 (nvlink)") == 6
    assert "interconnect **nvlink**" in markdown
