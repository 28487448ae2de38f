"""The pure parts of runtime identity: API and storage documents, the cache, route choice.

Documents are shaped like what docker 20.10, podman 4.3 and containers/storage wrote on this
host (captured while writing tests/test_identity_docker.py and test_identity_podman.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import MappingProxyType

import pytest

from agent.control import owners
from agent.control.systemd_dbus import parse_version, systemd_manages
from agent.control.targets import Target
from agent.identity.classify import classify
from agent.identity.discovery import Discovery
from agent.identity.engine_api import event_action, event_id, parse_inspect
from agent.identity.podman import PodmanStorage, parse_containers_json
from agent.identity.runtime_info import IdentityCache, RuntimeInfo
from agent.model.snapshot import WorkloadIdentity, WorkloadKind
from tests.support.cgroups import CgroupFactory
from tests.support.runc import RuncUnavailable, runc_container

CID = "ca5ab54769911b9d3f20244bb8019434ba54ba78ea63bdc14fc0be3a36886c23"
DOCKER_INSPECT = {
    "Id": CID, "Name": "/web-1", "Image": "sha256:474fc358", "RestartCount": 2,
    "State": {"Paused": False, "Pid": 42},
    "Config": {"Image": "local/busybox:1",
               "Labels": {"com.docker.compose.project": "shop", "n": 3}},
}
STORAGE = [{
    "id": CID, "names": ["pm-1"], "image": "97b5780d", "layer": "89c3",
    "metadata": json.dumps({"image-name": "localhost/local/busybox:1", "image-id": "97b5780d",
                            "name": "pm-1", "created-at": 1796095944}),
}]


def _ident(cgroup: str, wid: str | None = None, runtime: str = "docker") -> WorkloadIdentity:
    return WorkloadIdentity(id=wid or cgroup, kind=WorkloadKind.CONTAINER, runtime=runtime,
                            name=(wid or cgroup)[:12], cgroup=cgroup, inode=7)


def test_docker_inspect_document() -> None:
    info = parse_inspect("docker", DOCKER_INSPECT)
    assert info is not None
    assert (info.id, info.name, info.image, info.image_id) == (
        CID, "web-1", "local/busybox:1", "sha256:474fc358")
    assert dict(info.labels) == {"com.docker.compose.project": "shop"}  # non-strings dropped
    assert info.restart_count == 2
    assert parse_inspect("docker", {"Name": "x"}) is None
    assert parse_inspect("docker", ["not", "a", "dict"]) is None


def test_libpod_inspect_prefers_image_name_and_keeps_the_pod() -> None:
    doc = {"Id": CID, "Name": "pm-1", "ImageName": "localhost/local/busybox:1",
           "Image": "97b5780d", "Pod": "abc", "Config": {"Labels": {"app": "shop"}}}
    info = parse_inspect("podman", doc)
    assert info is not None and info.image == "localhost/local/busybox:1" and info.pod == "abc"


def test_events_of_docker_and_podman() -> None:
    docker_ev = {"Type": "container", "Action": "rename", "Actor": {"ID": CID}}
    podman_ev = {"status": "exec_start: sh", "id": CID}
    assert (event_id(docker_ev), event_action(docker_ev)) == (CID, "rename")
    assert (event_id(podman_ev), event_action(podman_ev)) == (CID, "exec_start")


def test_containers_json_and_garbage() -> None:
    (info,) = parse_containers_json(STORAGE)
    assert (info.runtime, info.name, info.image, info.image_id) == (
        "podman", "pm-1", "localhost/local/busybox:1", "97b5780d")
    bad_meta = [{"id": CID, "names": ["n1"], "metadata": "{not json"}]
    assert parse_containers_json(bad_meta)[0].name == "n1"
    assert parse_containers_json({"id": CID}) == []
    assert parse_containers_json([1, None, {"names": []}]) == []


def test_storage_is_read_again_only_when_it_changed(tmp_path: Path) -> None:
    store = PodmanStorage(tmp_path)
    assert store.read() is None  # nothing there, nothing changed
    d = tmp_path / "vfs-containers"
    d.mkdir()
    (d / "containers.json").write_text(json.dumps(STORAGE))
    first = store.read()
    assert first is not None and [i.name for i in first] == ["pm-1"]
    assert store.read() is None
    (d / "containers.json").write_text("[]")
    os.utime(d / "containers.json", ns=(1, 1))
    assert store.read() == []
    (d / "containers.json").unlink()
    assert store.read() == []  # the file went: its containers went with it


def test_cache_names_by_id_and_by_a_cgroup_named_by_the_id() -> None:
    cache = IdentityCache()
    info = parse_inspect("docker", DOCKER_INSPECT)
    assert info is not None
    cache.put(info)
    discovered = _ident(f"/docker/{CID}", CID)
    by_id = cache.enrich(discovered)
    assert cache.enrich(discovered) is by_id  # built once, not every cycle
    assert (by_id.name, by_id.image, by_id.labels["image_id"]) == (
        "web-1", "local/busybox:1", "sha256:474fc358")
    assert by_id.labels["restart_count"] == "2"
    # a --cgroup-parent the path rules do not know: discovery gave the path as the id
    by_path = cache.enrich(_ident(f"/ci/{CID}", runtime="unknown"))
    assert (by_path.id, by_path.runtime, by_path.name) == (CID, "docker", "web-1")
    other = _ident("/system.slice/x.service")
    assert cache.enrich(other) is other
    cache.put(RuntimeInfo("docker", CID, "renamed"))
    assert cache.enrich(discovered).name == "renamed"  # a new record: built again
    cache.replace_runtime("docker", [])
    assert cache.enrich(discovered) is discovered


def test_cache_keeps_other_runtimes_on_a_full_listing() -> None:
    cache = IdentityCache()
    cache.put(RuntimeInfo("podman", "p" * 64, "pm"))
    cache.put(RuntimeInfo("docker", "d" * 64, "old"))
    cache.replace_runtime("docker", [RuntimeInfo("docker", "e" * 64, "new")])
    assert (cache.count("docker"), cache.count("podman")) == (1, 1)
    assert cache.get("d" * 64) is None


def test_podman_cgroupfs_manager_path() -> None:
    c = classify(f"/ca-test/libpod-{CID}")
    assert (c.runtime, c.id) == ("podman", CID)
    assert classify(f"/machine.slice/libpod-{CID}.scope").runtime == "podman"
    assert classify(f"/machine.slice/libpod-conmon-{CID}.scope").role == "monitor"


def test_systemd_fallback_decision_on_this_host() -> None:
    """This host's PID 1 is not systemd: units are frozen through the cgroup file."""
    ok, why = systemd_manages()
    comm = Path("/proc/1/comm").read_text().strip()
    assert ok is (comm == "systemd" and Path("/run/systemd/system").is_dir())
    if not ok:
        assert why
    ident = WorkloadIdentity(id="/system.slice/burn.service", kind=WorkloadKind.SERVICE,
                             runtime="systemd", name="burn.service",
                             cgroup="/system.slice/burn.service", inode=1)
    target = Target("burn.service", ident.cgroup, Path("/nonexistent"), None,
                    MappingProxyType({}), ident)
    route = owners.choose_route(target, force_cgroup=False, client_of=lambda r: None,
                                lxc_paths=(), systemd_ok=systemd_manages)
    if ok:
        assert route.via == "systemd"
    else:
        assert route.via == "cgroup" and route.note == why
    forced = owners.choose_route(target, force_cgroup=True, client_of=lambda r: None,
                                 lxc_paths=(), systemd_ok=lambda: (True, ""))
    assert forced.via == "cgroup"


def test_systemd_decision_from_a_proc_tree(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "comm").write_text("systemd\n")
    run = tmp_path / "run-systemd"
    assert systemd_manages(tmp_path, run) == (False, f"{run} is missing: systemd did not "
                                                     "boot this host")
    run.mkdir()
    assert systemd_manages(tmp_path, run) == (True, "")
    (tmp_path / "1" / "comm").write_text("init\n")
    assert systemd_manages(tmp_path, run)[0] is False


def test_systemd_version_strings() -> None:
    assert parse_version("252.19-1~deb12u1") == 252
    assert parse_version("v255") == 255
    assert parse_version("unknown") is None


def test_owner_unavailable_falls_back_to_the_cgroup() -> None:
    ident = _ident(f"/docker/{CID}", CID)
    target = Target(CID, ident.cgroup, Path("/nonexistent"), None, MappingProxyType({}), ident)
    route = owners.choose_route(target, force_cgroup=False, client_of=lambda r: None,
                                lxc_paths=(), systemd_ok=lambda: (False, ""))
    assert route.via == "cgroup" and "docker API unavailable" in route.note


def test_runc_state_of_podman_and_kubernetes_annotations(cgroups: CgroupFactory) -> None:
    """A runc container carrying podman's manager annotation is podman's; CRI annotations give
    the Kubernetes container name and the image (real runc, real state.json)."""
    annotations = {"io.container.manager": "libpod",
                   "io.kubernetes.cri.container-name": "api",
                   "io.kubernetes.cri.image-name": "registry.example/api:2"}
    try:
        with runc_container(cgroups.create(), annotations=annotations) as c:
            w = Discovery(cgroups.layout).scan()[c.id]
            assert (w.runtime, w.container_name, w.image, w.name) == (
                "podman", "api", "registry.example/api:2", "api")
    except RuncUnavailable as e:
        pytest.skip(f"runc cannot run here: {e}")
