#!/usr/bin/env python3
"""Kite under a real container runtime (runc), as a kubelet would run it.

  sudo deploy/runtime-check.py [--bin-dir target/debug] [--requests 300] [--drop-caps]

What runs, all from real components:
  * the image: deploy/Dockerfile's runtime stage (debian:bookworm-slim + its RUN line) made
    with debootstrap (cached in --cache, built once, ~3 min), the binaries copied in as its
    COPY does, mounted as an overlay (a snapshotter's layout), read-only;
  * the agent container: the DaemonSet of `kubectl kustomize deploy/base`, translated to an OCI
    config the way containerd does for a non-privileged container: exactly its command, args,
    env, capabilities (bounding = effective = permitted = the added ones), no seccomp and no
    AppArmor profile (Unconfined), allowPrivilegeEscalation, read-only root, hostPID (no pid
    namespace), a private cgroup namespace (containerd's default on cgroup v2; the agent
    leaves it with --host-cgroupns), its memory limit, its volume mounts as bind mounts
    (/sys/fs/cgroup read-only), the default masked and read-only /proc paths, its own network
    namespace;
  * the pod: a network namespace, a kubelet cgroupfs-layout cgroup
    (/kubepods/besteffort/pod<uid>/<container>), its init container taken from the real
    webhook's answer (kite-webhook serve, an AdmissionReview over TLS) and run with that
    container's own security context (uid 65534, no capabilities, no privilege escalation,
    read-only root, the socket directory read-only and nothing else), then a workload
    container (testkit's HTTP/1.1 server) under the same pod cgroup;
  * traffic from outside the pod's cgroup, with curl counting its own answers.

Checks: the agent starts under that security context; gRPC answers on the pod's loopback
and is refused on the pod IP while /metrics answers there; the init container enrolls the pod;
Kite's request count for the pod equals curl's (Prometheus and kite-tui --once); removing the
pod's containers and cgroup detaches it (kite_attached_cgroups back to 0).
With --drop-caps the agent runs again without each capability in turn and what fails is
printed (DESIGN.md records it); then the least set that still counts exactly is sought, and
it must be the DaemonSet's (a capability the agent works without is a failure).

The node: the script runs itself again as PID 1 of a PID and mount namespace of its own
(node_pid_ns), so hostPID shows the agent a PID 1 it may open, as a node's systemd is, and
everything the run starts dies with that namespace.

Deviations from a cluster, all forced by having none: the agent runs with --kube=off and
--enroll-uid=65534 (no API server to confirm the pod, so the init container's uid is what is
trusted), NODE_NAME is the host name, the node's PID 1 is this script (the sandbox's own PID 1
refuses even root /proc/1/ns/cgroup), the hostPath /var/run/kite is a directory of this run
(so an agent already on this machine is not disturbed), and the init container has no
RuntimeDefault seccomp profile (runc has no built-in one).

Exit: 0 all checks passed; 1 a check failed; 77 a prerequisite is missing (runc, debootstrap,
kubectl, curl, not root, no cgroup v2). Cleans up containers, mounts, cgroups and network
namespaces it made, also on failure. Output: progress on stderr, a JSON summary on stdout.
"""
import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BINARIES = ["kite-agent", "kite-loader", "kite-webhook", "kite-init", "kite-tui"]
# containerd's defaults for a non-privileged container (oci/spec.go, populateDefaultUnixSpec).
MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
          "/sys/devices/virtual/powercap", "/proc/scsi"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
AGENT_NET = ("10.211.7.1", "10.211.7.2")  # agent pod IP, a peer pod's IP (netns of this run)


def log(*a):
    print("[runtime-check]", *a, file=sys.stderr, flush=True)


class Missing(Exception):
    pass


class Failed(Exception):
    pass


def run(cmd, check=True, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise Failed(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()[-2000:]}")
    return r


CAP_NUMBERS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4,
               "KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10,
               "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14,
               "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_ADMIN": 21, "SYS_NICE": 23,
               "SYS_RESOURCE": 24, "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31,
               "SYSLOG": 34, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40}


def bounding_set():
    """Capabilities this process may give a container (a sandboxed root may lack some)."""
    for line in open("/proc/self/status"):
        if line.startswith("CapBnd:"):
            mask = int(line.split()[1], 16)
    return {name for name, bit in CAP_NUMBERS.items() if mask >> bit & 1}


def can_open(path):
    try:
        os.close(os.open(path, os.O_RDONLY))
        return True
    except OSError:
        return False


def cgroup2_mount():
    for line in open("/proc/self/mounts"):
        f = line.split()
        if f[2] == "cgroup2":
            return f[1]
    raise Missing("no cgroup v2 mount")


# ---------------------------------------------------------------- the image
def runtime_stage_runs():
    """The RUN lines of the Dockerfile's last stage (continuations joined)."""
    text = open(os.path.join(REPO, "deploy/Dockerfile")).read()
    stage = text.split("\nFROM ")[-1]
    joined = re.sub(r"\\\n\s*", " ", stage)
    return [l[4:] for l in joined.splitlines() if l.startswith("RUN ")]


def build_rootfs(cache):
    stamp = os.path.join(cache, "rootfs.ok")
    want = json.dumps(runtime_stage_runs())
    if os.path.exists(stamp) and open(stamp).read() == want:
        return os.path.join(cache, "rootfs")
    if not shutil.which("debootstrap"):
        raise Missing("debootstrap is not installed (apt-get install debootstrap)")
    os.makedirs(cache, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache, prefix="build.")
    log(f"building the image's root filesystem in {tmp} (once; debootstrap bookworm minbase)")
    t0 = time.time()
    mirror = "http://deb.debian.org/debian"
    for src in ["/etc/apt/sources.list.d/debian.sources"]:
        if os.path.exists(src):
            m = re.search(r"^URIs:\s*(\S+)", open(src).read(), re.M)
            if m:
                mirror = m.group(1)
    run(["debootstrap", "--variant=minbase", "bookworm", tmp, mirror])
    shutil.copy("/etc/resolv.conf", os.path.join(tmp, "etc/resolv.conf"))
    run(["mount", "-t", "proc", "proc", os.path.join(tmp, "proc")])
    run(["mount", "--rbind", "/dev", os.path.join(tmp, "dev")])
    try:
        for cmd in runtime_stage_runs():
            log(f"RUN {cmd[:90]}…")
            run(["chroot", tmp, "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                 "DEBIAN_FRONTEND=noninteractive", "/bin/sh", "-c", cmd])
    finally:
        run(["umount", "-l", os.path.join(tmp, "dev")], check=False)
        run(["umount", "-l", os.path.join(tmp, "proc")], check=False)
    final = os.path.join(cache, "rootfs")
    if os.path.exists(final):
        shutil.rmtree(final)
    os.rename(tmp, final)
    open(stamp, "w").write(want)
    log(f"root filesystem built in {time.time() - t0:.0f} s")
    return final


# ---------------------------------------------------------------- OCI configs
def base_config(args, env, root, readonly_root, cgroups_path, netns, user=(0, 0), caps=(),
                no_new_privs=False, pid_ns=True, cgroup_ns=True):
    caps = [f"CAP_{c}" for c in caps]
    ns = [{"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
          {"type": "network", "path": netns}]
    if pid_ns:
        ns.append({"type": "pid"})
    if cgroup_ns:
        ns.append({"type": "cgroup"})
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": user[0], "gid": user[1]},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + env,
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": no_new_privs,
        },
        "root": {"path": root, "readonly": readonly_root},
        "hostname": "kite-rt",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777", "size=16m"]},
        ],
        "linux": {
            "namespaces": ns,
            "cgroupsPath": cgroups_path,
            "maskedPaths": MASKED,
            "readonlyPaths": READONLY,
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        },
    }


def bind(dest, src, ro):
    return {"destination": dest, "type": "bind", "source": src,
            "options": ["rbind", "rprivate"] + (["ro"] if ro else [])}


def quantity(q):
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for u, m in units.items():
        if q.endswith(u):
            return int(q[:-2]) * m
    return int(q)


# ---------------------------------------------------------------- the run
class Run:
    def __init__(self, opts):
        self.opts = opts
        self.id = f"kite-rt-{os.getpid()}"
        self.tmp = tempfile.mkdtemp(prefix=self.id + ".")
        os.chmod(self.tmp, 0o755)  # the init container (uid 65534) reaches the socket below
        self.state = os.path.join(self.tmp, "runc")  # runc --root: only our containers
        self.netns = []
        self.mounts = []
        self.cgroups = []  # relative paths (kubepods/...) created under every hierarchy
        self.containers = []
        self.unavailable = []
        self.deviations = ["--kube=off --enroll-uid=65534 (no API server)",
                           "the node's PID 1 is this script (a PID namespace of its own)",
                           "hostPath /var/run/kite is a directory of this run",
                           "kite-init without a RuntimeDefault seccomp profile"]
        self.procs = []
        self.hostrun = os.path.join(self.tmp, "hostpath-var-run-kite")
        os.makedirs(self.hostrun)
        self.v2 = cgroup2_mount()
        self.existed = {h: os.path.isdir(os.path.join(h, "kubepods")) for h in self.hierarchies()}

    def hierarchies(self):
        out = []
        for line in open("/proc/self/mounts"):
            f = line.split()
            if f[2] in ("cgroup", "cgroup2"):
                out.append(f[1])
        return out

    # --- cleanup, whatever happened
    def cleanup(self):
        for c in reversed(self.containers):
            run(["runc", "--root", self.state, "kill", c, "KILL"], check=False)
        for c in reversed(self.containers):
            for _ in range(50):
                if run(["runc", "--root", self.state, "delete", "--force", c], check=False).returncode == 0:
                    break
                time.sleep(0.1)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for m in reversed(self.mounts):
            run(["umount", "-l", m], check=False)
        for rel in reversed(self.cgroups):
            self.remove_cgroup(rel)
        for h in self.hierarchies():
            top = os.path.join(h, "kubepods")
            if not self.existed.get(h) and os.path.isdir(top):
                for d in ["besteffort", "burstable", ""]:
                    try:
                        os.rmdir(os.path.join(top, d) if d else top)
                    except OSError:
                        pass
        for n in self.netns:
            run(["ip", "netns", "delete", n], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def remove_cgroup(self, rel):
        for h in self.hierarchies():
            d = os.path.join(h, rel)
            if not os.path.isdir(d):
                continue
            for root, dirs, _ in os.walk(d, topdown=False):
                for x in dirs:
                    try:
                        os.rmdir(os.path.join(root, x))
                    except OSError:
                        pass
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except OSError:
                    time.sleep(0.1)

    # --- pieces
    def make_netns(self, name):
        run(["ip", "netns", "add", name])
        self.netns.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return f"/var/run/netns/{name}"

    def binaries_layer(self):
        """The Dockerfile's `COPY --from=build /out/ /usr/local/bin/` as a layer of its own,
        made once per run (hard links where possible: the debug binaries are ~200 MB each)."""
        layer = os.path.join(self.tmp, "layer-binaries")
        if os.path.isdir(layer):
            return layer
        dest = os.path.join(layer, "usr/local/bin")
        os.makedirs(dest)
        for b in BINARIES:
            src = os.path.join(self.opts.bin_dir, b)
            if not os.path.exists(src):
                raise Missing(f"{src} is missing: build it first (cargo build -p kite-agent -p kite-webhook -p kite-init -p kite-tui)")
            try:
                os.link(src, os.path.join(dest, b))
            except OSError:
                shutil.copy2(src, os.path.join(dest, b))
        return layer

    def image(self, rootfs, name):
        """The image as a snapshotter would mount it: the binaries' layer over the cached
        root, and an empty upper directory of the container's own."""
        d = os.path.join(self.tmp, "img-" + name)
        upper, work, merged = (os.path.join(d, x) for x in ("upper", "work", "merged"))
        for x in (upper, work, merged):
            os.makedirs(x, exist_ok=True)
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={self.binaries_layer()}:{rootfs},upperdir={upper},workdir={work}", merged])
        self.mounts.append(merged)
        return merged

    def start(self, name, config, foreground=False, timeout=30):
        bundle = os.path.join(self.tmp, "bundle-" + name)
        os.makedirs(bundle, exist_ok=True)
        json.dump(config, open(os.path.join(bundle, "config.json"), "w"), indent=1)
        self.containers.append(name)
        out = open(os.path.join(self.tmp, name + ".log"), "w")
        cmd = ["runc", "--root", self.state, "run", "--bundle", bundle, name]
        if foreground:
            r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
            self.containers.remove(name)
            return r.returncode, open(out.name).read()
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def stop(self, name):
        run(["runc", "--root", self.state, "kill", name, "KILL"], check=False)
        for _ in range(100):
            if run(["runc", "--root", self.state, "delete", "--force", name], check=False).returncode == 0:
                break
            time.sleep(0.1)
        if name in self.containers:
            self.containers.remove(name)

    def log_of(self, name):
        try:
            return open(os.path.join(self.tmp, name + ".log")).read()
        except OSError:
            return ""


def rendered():
    out = run(["kubectl", "kustomize", os.path.join(REPO, "deploy/base")]).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def agent_config(r, docs, image, netns, caps_override=None):
    ds = next(d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "kite-agent")
    pod = ds["spec"]["template"]["spec"]
    c = next(x for x in pod["containers"] if x["name"] == "kite-agent")
    sc = c["securityContext"]
    assert not sc.get("privileged"), "the DaemonSet must not be privileged"
    assert sc["capabilities"]["drop"] == ["ALL"]
    caps = sc["capabilities"]["add"] if caps_override is None else caps_override
    have = bounding_set()
    missing = [c for c in caps if c not in have]
    if missing:
        log(f"this machine's root lacks {missing} (bounding set): the agent runs without")
        caps = [c for c in caps if c in have]
        r.unavailable = missing
    args = list(c["command"]) + list(c.get("args", []))
    # No API server here: the pod is trusted by the uid its init container runs as.
    args += ["--kube=off", "--enroll-uid=65534"]
    # A private cgroup namespace, as containerd gives every container on cgroup v2 nodes; the
    # agent's --host-cgroupns leaves it for /proc/1/ns/cgroup, the node's (see node_pid_ns).
    cgroup_ns = True
    if "--host-cgroupns" in args and not can_open("/proc/1/ns/cgroup"):
        raise Failed("/proc/1/ns/cgroup cannot be opened (the node PID namespace is missing)")
    env = []
    for e in c.get("env", []):
        if "value" in e:
            if e["name"] == "KITE_KUBE":
                continue
            env.append(f"{e['name']}={e['value']}")
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            env.append(f"{e['name']}={socket.gethostname()}")
    assert sc.get("seccompProfile", {}).get("type") == "Unconfined"
    assert sc.get("appArmorProfile", {}).get("type") == "Unconfined"
    uid = str(uuid.uuid4())
    cfg = base_config(
        args, env, image, sc.get("readOnlyRootFilesystem", False),
        f"/kubepods/burstable/pod{uid}/{r.id}-agent", netns,
        caps=caps, no_new_privs=not sc.get("allowPrivilegeEscalation", True),
        pid_ns=not pod.get("hostPID", False), cgroup_ns=cgroup_ns)
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        hp = vols[m["name"]]["hostPath"]["path"]
        src = r.hostrun if hp == "/var/run/kite" else hp
        cfg["mounts"].append(bind(m["mountPath"], src, m.get("readOnly", False)))
    limit = c.get("resources", {}).get("limits", {}).get("memory")
    if limit:
        cfg["linux"]["resources"]["memory"] = {"limit": quantity(limit)}
    cfg["linux"]["resources"]["devices"] = [{"allow": False, "access": "rwm"}]
    return cfg, caps, f"kubepods/burstable/pod{uid}"


def injected_init(r, pod_name, namespace):
    """The init container the real webhook injects, from its answer to an AdmissionReview."""
    wh = os.path.join(r.opts.bin_dir, "kite-webhook")
    certs = os.path.join(r.tmp, "certs")
    run([wh, "certs", "--extra-name", "127.0.0.1", "--out-dir", certs])
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = subprocess.Popen([wh, "serve", "--addr", f"127.0.0.1:{port}",
                          "--tls-cert", f"{certs}/tls.crt", "--tls-key", f"{certs}/tls.key",
                          "--init-image", "kite:0.1.0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r.procs.append(p)
    review = json.load(open(os.path.join(REPO, "webhook/tests/fixtures/review-pod.json")))
    review["request"]["namespace"] = namespace
    review["request"]["object"]["metadata"]["namespace"] = namespace
    body = os.path.join(r.tmp, "review.json")
    json.dump(review, open(body, "w"))
    deadline = time.time() + 10
    while True:
        out = run(["curl", "-sS", "--max-time", "5", "--cacert", f"{certs}/ca.crt",
                   "-H", "Content-Type: application/json", "--data-binary", f"@{body}",
                   f"https://127.0.0.1:{port}/mutate"], check=False)
        if out.returncode == 0:
            break
        if time.time() > deadline:
            raise Failed(f"the webhook did not answer: {out.stderr}")
        time.sleep(0.1)
    p.kill()
    p.wait()
    resp = json.loads(out.stdout)["response"]
    patch = json.loads(base64.b64decode(resp["patch"]))
    init, volume = None, None
    for op in patch:
        vals = op["value"] if isinstance(op["value"], list) else [op["value"]]
        for v in vals:
            if isinstance(v, dict) and v.get("name") == "kite-init" and "image" in v:
                init = v
            if isinstance(v, dict) and "hostPath" in v:
                volume = v
    if not init or not volume:
        raise Failed(f"no kite-init container or hostPath volume in the patch {patch}")
    return init, volume


def init_config(r, init, volume, image, netns, pod_cg, pod):
    sc = init["securityContext"]
    env = []
    downward = {"metadata.name": pod["name"], "metadata.namespace": pod["namespace"],
                "metadata.uid": pod["uid"]}
    for e in init.get("env", []):
        if "value" in e:
            env.append(f"{e['name']}={e['value']}")
        else:
            env.append(f"{e['name']}={downward[e['valueFrom']['fieldRef']['fieldPath']]}")
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    cfg = base_config(init["command"] + init.get("args", []), env, image,
                      sc.get("readOnlyRootFilesystem", False),
                      f"/{pod_cg}/{r.id}-init", netns,
                      user=(sc["runAsUser"], sc.get("runAsGroup", sc["runAsUser"])),
                      caps=[], no_new_privs=not sc.get("allowPrivilegeEscalation", True))
    mounts = init["volumeMounts"]
    assert len(mounts) == 1 and mounts[0]["name"] == volume["name"], mounts
    assert volume["hostPath"]["path"] == "/var/run/kite", volume
    cfg["mounts"].append(bind(mounts[0]["mountPath"], r.hostrun, mounts[0].get("readOnly", False)))
    return cfg


def workload_config(r, netns, pod_cg, port):
    root = os.path.join(r.tmp, "workload-root")
    for d in ["usr", "bin", "lib", "lib64", "sbin", "etc", "srv", "proc", "dev", "sys", "tmp"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    cfg = base_config(["python3", "/srv/httpd.py", "127.0.0.1", str(port)], [], root, True,
                      f"/{pod_cg}/{r.id}-web", netns, user=(1000, 1000), caps=[],
                      no_new_privs=True)
    for d in ["usr", "bin", "lib", "lib64", "sbin", "etc"]:
        if os.path.exists("/" + d):
            cfg["mounts"].append(bind("/" + d, "/" + d, True))
    cfg["mounts"].append(bind("/srv", os.path.join(REPO, "testkit/servers"), True))
    return cfg


def in_netns(ns, cmd, **kw):
    return run(["ip", "netns", "exec", ns] + cmd, **kw)


def metrics(ns, addr="127.0.0.1"):
    r = in_netns(ns, ["curl", "-sS", "--max-time", "5", f"http://{addr}:9464/metrics"], check=False)
    return r.stdout if r.returncode == 0 else None


def sample(text, name, **labels):
    total = None
    for line in (text or "").splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total = (total or 0) + float(line.rsplit(" ", 1)[1])
    return total


def wait_for(what, fn, timeout):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.25)
    raise Failed(f"{what} (waited {timeout} s, last: {str(last)[:300]})")


def one_pod(r, rootfs, agent_ns, requests, tag):
    """A pod enrolled by its injected init container, its workload serving `requests`
    requests from curl; returns (curl's 200s, Kite's count, pod cgroup, pod name)."""
    pod = {"name": f"web-{tag}-{os.getpid()}", "namespace": "shop", "uid": str(uuid.uuid4())}
    pod_cg = f"kubepods/besteffort/pod{pod['uid']}"
    r.cgroups.append(pod_cg)
    ns_name = f"{r.id}-{tag}"
    ns = r.make_netns(ns_name)
    init, volume = injected_init(r, pod["name"], pod["namespace"])
    img = r.image(rootfs, "init-" + tag)
    code, out = r.start(f"{r.id}-{tag}-init", init_config(r, init, volume, img, ns, pod_cg, pod),
                        foreground=True, timeout=30)
    if code != 0:
        raise Failed(f"kite-init exited {code}: {out}")
    log(f"kite-init: {out.strip()[-300:]}")
    port = 8080
    r.start(f"{r.id}-{tag}-web", workload_config(r, ns, pod_cg, port))
    url = f"http://127.0.0.1:{port}/d/1"
    wait_for("the workload's server to answer",
             lambda: in_netns(ns_name, ["curl", "-s", "-o", "/dev/null", "--max-time", "1",
                                        f"http://127.0.0.1:{port}/healthz-probe-not-counted"],
                              check=False).returncode == 0, 20)
    # That probe is one request too: counted below with the client's.
    ok = 1
    batch = 50
    sent = 0
    while sent < requests:
        n = min(batch, requests - sent)
        per_url = []
        for _ in range(n):
            per_url += ["-o", "/dev/null", url]
        res = in_netns(ns_name, ["curl", "-s", "--max-time", "20", "-w", "%{http_code}\n"]
                       + per_url, check=False)
        ok += res.stdout.split().count("200")
        sent += n
    # Kite's count, once it stops changing (windows of 1 s; at most 20 s).
    kite, stable, deadline = None, 0, time.time() + 20
    while time.time() < deadline:
        text = metrics(agent_ns)
        now = sample(text, "http_server_request_duration_seconds_count", k8s_pod_name=pod["name"])
        stable = stable + 1 if now is not None and now == kite else 0
        kite = now
        if kite == ok or stable >= 12:
            break
        time.sleep(0.25)
    if kite != ok:
        lines = [l for l in (text or "").splitlines()
                 if l.startswith("http_server_request_duration_seconds_count")]
        log(f"curl: {ok} answers; Kite: {kite}; series:\n" + "\n".join(lines[:20]))
    return ok, kite, pod, pod_cg, ns_name


def start_agent(r, rootfs, docs, tag, caps=None):
    ns_name = f"{r.id}-agent{tag}"
    ns = r.make_netns(ns_name)
    peer = f"{r.id}-peer{tag}"
    r.make_netns(peer)
    va, vb = f"kra{tag}{os.getpid() % 10000}", f"krb{tag}{os.getpid() % 10000}"
    run(["ip", "link", "add", va, "netns", ns_name, "type", "veth", "peer", "name", vb, "netns", peer])
    run(["ip", "-n", ns_name, "addr", "add", f"{AGENT_NET[0]}/24", "dev", va])
    run(["ip", "-n", peer, "addr", "add", f"{AGENT_NET[1]}/24", "dev", vb])
    run(["ip", "-n", ns_name, "link", "set", va, "up"])
    run(["ip", "-n", peer, "link", "set", vb, "up"])
    img = r.image(rootfs, "agent" + tag)
    cfg, caps, agent_cg = agent_config(r, docs, img, ns, caps)
    r.cgroups.append(agent_cg)
    name = f"{r.id}-agent{tag}"
    proc = r.start(name, cfg)
    return name, ns_name, peer, caps, proc


def cgroup_ns_of(r, name):
    """"host" when the container's process is in this script's (the node's) cgroup namespace,
    "private" when it stayed in the one runc made for it."""
    pid = json.loads(run(["runc", "--root", r.state, "state", name]).stdout)["pid"]
    same = os.readlink(f"/proc/{pid}/ns/cgroup") == os.readlink("/proc/self/ns/cgroup")
    return "host" if same else "private"


def wait_ready(r, proc, ns, timeout):
    """True once /readyz answers on the pod's loopback; False if the agent exits or times out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if in_netns(ns, ["curl", "-sf", "--max-time", "2", "http://127.0.0.1:9464/readyz"],
                    check=False).returncode == 0:
            return True
        time.sleep(0.25)
    return False


def node_pid_ns():
    """Runs this script again as PID 1 of a PID and mount namespace of its own: the node.

    The DaemonSet's hostPID and --host-cgroupns need a PID 1 the agent may open
    (/proc/1/ns/cgroup), as systemd is on a node; a sandbox's PID 1 may not be (here it is
    not: even root gets EACCES). As PID 1, this script is the node's init: root with every
    capability, in the host's cgroup namespace, and every process of the run dies with it
    (the kernel kills a PID namespace's processes when its init exits); the mounts and
    network namespaces die with the mount namespace. Cgroups are removed by cleanup()."""
    cmd = ["unshare", "--pid", "--mount", "--mount-proc", "--propagation", "private",
           "--kill-child=SIGTERM", sys.executable, os.path.abspath(__file__)] + sys.argv[1:]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)

    def forward(sig, _frame):
        # To the inner PID 1 (unshare's child), whose handler runs the cleanup; then wait
        # for it, so a caller's timeout returns only once everything is removed.
        try:
            for child in open(f"/proc/{p.pid}/task/{p.pid}/children").read().split():
                os.kill(int(child), signal.SIGTERM)
        except OSError:
            p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            return p.wait()
        except InterruptedError:
            continue


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin-dir", default=os.path.join(REPO, "target/debug"))
    ap.add_argument("--cache", default="/var/cache/kite-runtime-check")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--drop-caps", action="store_true")
    opts = ap.parse_args()
    if not 1 <= opts.requests <= 100_000:
        print("--requests must be between 1 and 100000", file=sys.stderr)
        return 2
    t0 = time.time()
    summary = {}
    try:
        if os.geteuid() != 0:
            raise Missing("run as root (runc, cgroups, network namespaces)")
        for tool in ["runc", "kubectl", "curl", "ip"]:
            if not shutil.which(tool):
                raise Missing(f"{tool} is not installed")
        cgroup2_mount()
        rootfs = build_rootfs(opts.cache)
    except Missing as e:
        log(f"SKIP: {e}")
        print(json.dumps({"skipped": str(e)}))
        return 77
    if os.getpid() != 1:
        return node_pid_ns()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # PID 1: cleanup runs on TERM
    summary["runc"] = run(["runc", "--version"]).stdout.splitlines()[0]
    docs = rendered()
    r = Run(opts)
    try:
        name, agent_ns, peer, caps, proc = start_agent(r, rootfs, docs, "")
        t_start = time.time()
        if not wait_ready(r, proc, agent_ns, 60):
            raise Failed("the agent did not become ready: " + r.log_of(name)[-1500:])
        summary["agent_ready_seconds"] = round(time.time() - t_start, 1)
        summary["agent_cgroup_namespace"] = cgroup_ns_of(r, name)
        summary["capabilities"] = caps
        summary["capabilities_unavailable_here"] = r.unavailable
        summary["deviations"] = r.deviations
        # gRPC on the loopback only; /metrics on the pod IP.
        tui = os.path.join(opts.bin_dir, "kite-tui")
        once = in_netns(agent_ns, [tui, "--once", "-o", "json", "--addr", "127.0.0.1:7777"], check=False)
        if once.returncode != 0:
            raise Failed(f"kite-tui on the pod's loopback: {once.stderr}")
        refused = in_netns(peer, ["curl", "-s", "--max-time", "3", f"http://{AGENT_NET[0]}:7777/"], check=False)
        if refused.returncode != 7:  # curl: "couldn't connect"
            raise Failed(f"gRPC answered on the pod IP (curl exit {refused.returncode})")
        if not metrics(peer, AGENT_NET[0]):
            raise Failed("/metrics does not answer on the pod IP")
        summary["grpc_on_pod_ip"] = "refused"
        summary["metrics_on_pod_ip"] = "answers"

        ok, kite, pod, pod_cg, pod_ns = one_pod(r, rootfs, agent_ns, opts.requests, "a")
        summary["client_200s"] = ok
        summary["kite_requests"] = kite
        once = in_netns(agent_ns, [tui, "--once", "-o", "json", "--addr", "127.0.0.1:7777"])
        text = once.stdout
        if pod["name"] not in text:
            raise Failed(f"kite-tui --once does not show {pod['name']}: {text[:500]}")
        attached = sample(metrics(agent_ns), "kite_attached_cgroups")
        summary["attached_with_pod"] = attached
        # The kubelet removes the pod: its containers, then its cgroup.
        for c in list(r.containers):
            if c.startswith(f"{r.id}-a-"):
                r.stop(c)
        r.remove_cgroup(pod_cg)
        r.cgroups.remove(pod_cg)
        wait_for("the removed pod to be detached",
                 lambda: sample(metrics(agent_ns), "kite_attached_cgroups") == 0, 30)
        summary["attached_after_removal"] = 0
        summary["seconds_main"] = round(time.time() - t0, 1)

        if opts.drop_caps:
            r.stop(name)
            counter = [0]

            def attempt(with_caps):
                """What happens with exactly these capabilities: "works" or what failed."""
                counter[0] += 1
                tag = str(counter[0])
                n2, ns2, _, _, p2 = start_agent(r, rootfs, docs, tag, with_caps)
                try:
                    if not wait_ready(r, p2, ns2, 30):
                        lines = [l for l in r.log_of(n2).splitlines() if l.strip()]
                        return "does not start: " + (lines[-1] if lines else "no output")[-300:]
                    try:
                        ok2, kite2, _, _, _ = one_pod(r, rootfs, ns2, 50, "c" + tag)
                    except Failed as e:
                        notes = [l for l in r.log_of(n2).splitlines() if "WARN" in l or "ERROR" in l]
                        return f"starts, then: {e}; agent: {' | '.join(notes[-2:])[-300:]}"
                    return "works" if ok2 == kite2 else f"counts {kite2} of {ok2}"
                finally:
                    r.stop(n2)

            # Each capability alone left out, then the least set: leave out, one after the
            # other, every capability the agent still works without.
            alone = {}
            for cap in caps:
                t1 = time.time()
                outcome = attempt([c for c in caps if c != cap])
                alone[cap] = {"without_it": outcome, "seconds": round(time.time() - t1, 1)}
                log(f"without {cap} alone: {outcome}")
            # The broad capabilities first: SYS_ADMIN alone covers BPF, PERFMON and
            # NET_ADMIN's checks here (bpf_capable(), perfmon_capable(), bpf_net_capable()),
            # so where it is needed anyway (setns for --host-cgroupns) the narrow ones go.
            # The set found must be the manifest's: a capability it adds and the agent works
            # without is a failure (the expectation that keeps the manifest tight).
            broad = ["SYS_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"]
            order = [c for c in broad if c in caps] + [c for c in caps if c not in broad]
            least, needed = list(caps), {}
            for cap in order:
                trial = [c for c in least if c != cap]
                outcome = attempt(trial)
                log(f"with {trial}: {outcome}")
                if outcome == "works":
                    least = trial
                else:
                    needed[cap] = outcome
            summary["drop_caps"] = alone
            summary["least_capabilities"] = least
            summary["why_each_is_needed"] = needed
            if sorted(least) != sorted(caps):
                raise Failed(f"the DaemonSet adds {caps} but the agent works with {least}: "
                             "tighten deploy/base/agent.yaml (and DESIGN.md's record)")
        summary["seconds"] = round(time.time() - t0, 1)
        print(json.dumps(summary, indent=1))
        if ok != kite:
            log(f"FAIL: curl got {ok} answers, Kite counted {kite}")
            return 1
        log(f"OK in {summary['seconds']} s")
        return 0
    except SystemExit:  # SIGTERM (a caller's timeout): still say so, then clean up
        log("FAIL: terminated")
        summary["failed"] = "terminated"
        print(json.dumps(summary, indent=1))
        raise
    except (Failed, Missing, AssertionError, subprocess.TimeoutExpired, OSError) as e:
        log(f"FAIL: {e}")
        for c in r.containers:
            log(f"--- {c} log:\n{r.log_of(c)[-3000:]}")
        summary["failed"] = str(e)
        print(json.dumps(summary, indent=1))
        return 1
    finally:
        r.cleanup()


if __name__ == "__main__":
    sys.exit(main())
