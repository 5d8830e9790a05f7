"""Context affinity over replicas: 3 squeeze-server replicas sharing a context store
(--shared_store) behind nginx (deploy/helm/squeeze/files/nginx-affinity.conf.template), many clients.
Each context is served by one replica only; killing a replica under load loses only the
requests it had in flight, its contexts are then served by the others (loaded from the shared
store, with the same greedy answers), and List sees every context throughout."""
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import squeeze

import harness

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CONTEXTS = [f"ctx{i}" for i in range(6)]
QUESTION = "\nQuestion: Which river runs through Veloria?"


def start_nginx(workdir, listen_port, replica_ports):
    with open(os.path.join(harness.SOURCE_DIR, "deploy", "helm", "squeeze", "files",
                           "nginx-affinity.conf.template")) as f:
        site = f.read()
    upstreams = "\n    ".join(f"server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;"
                               for p in replica_ports)
    site = site.replace("@LISTEN@", f"127.0.0.1:{listen_port}").replace("@UPSTREAMS@", upstreams)
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
{site}
}}
""")
    proc = subprocess.Popen([NGINX, "-p", workdir, "-c", conf, "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("nginx exited: " + proc.stderr.read().decode())
        try:
            import socket
            socket.create_connection(("127.0.0.1", listen_port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not start")


class AffinityTest(unittest.TestCase):
    def setUp(self):
        self.assertTrue(os.path.exists(NGINX), "nginx is missing: scripts/install_deps.sh "
                        "installs nginx-light")
        self.workdir = tempfile.mkdtemp(prefix="squeeze-affinity-")
        shared = os.path.join(self.workdir, "shared")
        self.replicas = [harness.Server(f"--shared_store={shared}", "--max_running=8",
                                        name=f"replica{i}", workdir=self.workdir).start()
                         for i in range(3)]
        self.proxy_port = harness.free_port()
        self.nginx = start_nginx(self.workdir, self.proxy_port, [r.port for r in self.replicas])
        self.client = squeeze.Client(f"127.0.0.1:{self.proxy_port}", timeout=120)

    def tearDown(self):
        self.client.close()
        self.nginx.terminate()
        self.nginx.wait(10)
        for r in self.replicas:
            r.kill()

    def resident(self, replicas):
        return {i: int(r.metric("squeeze_resident_contexts")) for i, r in replicas.items()}

    def answer(self, name):
        return self.client.complete(QUESTION, name, max_tokens=6, temperature=0,
                                    ignore_eos=True, mode="dense").token_ids

    def test_affinity_failover_and_listing(self):
        doc = harness.document(6000)
        for i, name in enumerate(CONTEXTS):
            self.client.register_context(name, doc[i * 700:i * 700 + 900])
        everyone = dict(enumerate(self.replicas))
        # Registration went through the ring too: each context is resident on one replica.
        self.assertEqual(sum(self.resident(everyone).values()), len(CONTEXTS))
        self.assertEqual(sorted(c.name for c in self.client.list_contexts()), CONTEXTS)
        before = {name: self.answer(name) for name in CONTEXTS}

        # Many clients, random contexts: no replica loads a context it does not own.
        errors = []

        def burst(seed, n):
            rng = random.Random(seed)
            for _ in range(n):
                try:
                    out = self.client.complete(QUESTION, rng.choice(CONTEXTS), max_tokens=4,
                                               ignore_eos=True)
                    assert len(out.token_ids) == 4
                except Exception as e:  # noqa: BLE001 - collected for the assertion
                    errors.append(e)

        threads = [threading.Thread(target=burst, args=(s, 4)) for s in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        residents = self.resident(everyone)
        self.assertEqual(sum(residents.values()), len(CONTEXTS), residents)
        # The C++ client (squeeze-cli) sends the same header: its call lands on the owner too.
        out = subprocess.run([harness.binary("squeeze-cli"), f"--server=127.0.0.1:"
                              f"{self.proxy_port}", "generate", "--context=ctx0",
                              f"--input={QUESTION}", "--max_tokens=3", "--ignore_eos"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(self.resident(everyone), residents)

        # Kill the replica that holds the most contexts while clients keep sending.
        victim = max(residents, key=residents.get)
        self.assertGreater(residents[victim], 0)
        outcomes = []  # (start time, end time, error or None)
        stop = threading.Event()

        def load(seed):
            rng = random.Random(seed)
            while not stop.is_set():
                start = time.time()
                try:
                    self.client.complete(QUESTION, rng.choice(CONTEXTS), max_tokens=4,
                                         ignore_eos=True)
                    outcomes.append((start, time.time(), None))
                except squeeze.SqueezeError as e:
                    outcomes.append((start, time.time(), e))

        threads = [threading.Thread(target=load, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        self.replicas[victim].kill()
        # Reaped (kill waits): from here on its port refuses connections. Calls started before,
        # while the process was dying (which can take a while on a loaded machine), may fail.
        killed_at = time.time()
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join(60)
        failed = [(s, e) for s, _, e in outcomes if e is not None]
        after_kill = [o for o in outcomes if o[0] > killed_at + 0.05]
        self.assertGreater(len(after_kill), 10)
        # Only calls already in flight when the replica died may fail.
        self.assertTrue(all(s <= killed_at + 0.05 for s, _ in failed), failed)
        self.assertLessEqual(len(failed), len(threads))
        print(f"\nreplica {victim} killed under load: {len(outcomes)} calls, {len(failed)} failed "
              f"(in flight), {len(after_kill)} started after the kill all answered",
              file=sys.stderr)

        survivors = {i: r for i, r in everyone.items() if i != victim}
        # Every context answers, the victim's from another replica, unchanged.
        after = {name: self.answer(name) for name in CONTEXTS}
        self.assertEqual(after, before)
        self.assertEqual(sum(self.resident(survivors).values()), len(CONTEXTS))
        self.assertEqual(sorted(c.name for c in self.client.list_contexts()), CONTEXTS)

        # A delete through any replica removes the context for all of them.
        self.assertTrue(self.client.delete_context("ctx1"))
        with self.assertRaises(squeeze.NotFound):
            self.client.complete(QUESTION, "ctx1", max_tokens=2)
        for r in survivors.values():
            with squeeze.Client(r.address, timeout=30) as direct:
                with self.assertRaises(squeeze.NotFound):
                    direct.complete(QUESTION, "ctx1", max_tokens=2)
                self.assertNotIn("ctx1", [c.name for c in direct.list_contexts()])


if __name__ == "__main__":
    unittest.main(verbosity=2)
