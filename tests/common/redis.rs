//! Starts `redis-server` processes for tests: single nodes that can be
//! stopped, restarted and paused, replicas, sentinels, and small clusters.
//!
//! Everything listens on 127.0.0.1 only and keeps its files in a temporary
//! directory that is removed with the server.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh, empty directory under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "sis-{tag}-{}-{n}-{:x}",
        std::process::id(),
        random_u64() & 0xffff_ffff
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// A port the kernel just handed out and took back; may race, callers retry.
fn free_port() -> u16 {
    TcpListener::bind((LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((LOCALHOST, port)).is_ok()
}

/// Sends one inline command and returns the raw reply, or `None` when the
/// server does not answer within `timeout`.
fn raw_command(port: u16, command: &str, timeout: Duration) -> Option<String> {
    let addr = SocketAddr::from((LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn answers_ping(port: u16) -> bool {
    raw_command(port, "PING", Duration::from_millis(200)).is_some_and(|r| r.starts_with("+PONG"))
}

/// Runs `redis-cli -p <port> <args>` and returns its trimmed stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// One `redis-server` on a loopback port.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
    /// Whether `dir` is ours to remove (not when a cluster owns it).
    owns_dir: bool,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// As [`start`](Self::start), with extra `redis-server` arguments
    /// (e.g. `["--replicaof", "127.0.0.1", "6379"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = temp_dir("redis");
        for _ in 0..20 {
            let mut server = RedisServer {
                port: free_port(),
                dir: dir.clone(),
                extra: extra.iter().map(|a| a.to_string()).collect(),
                child: None,
                owns_dir: true,
            };
            if server.spawn() {
                return server;
            }
            server.owns_dir = false;
        }
        panic!("could not start redis-server on a free port");
    }

    /// Rotation-script calls the server has run (EVALSHA and EVAL), from its
    /// own statistics: how many store calls the gateway made.
    pub fn script_calls(&self) -> u64 {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    /// Every key and every value in the server, concatenated: what a dump of
    /// the store would show an attacker.
    pub fn dump_all(&self) -> Vec<u8> {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut con = client.get_connection().expect("connect to redis");
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut con).expect("KEYS");
        let mut out = Vec::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(&key).query(&mut con).expect("TYPE");
            let values: Vec<Vec<u8>> = match kind.as_str() {
                "hash" => redis::cmd("HGETALL").arg(&key).query(&mut con),
                "set" => redis::cmd("SMEMBERS").arg(&key).query(&mut con),
                "string" => redis::cmd("GET")
                    .arg(&key)
                    .query::<Vec<u8>>(&mut con)
                    .map(|v| vec![v]),
                "list" => redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query(&mut con),
                "zset" => redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query(&mut con),
                other => panic!("unexpected key type {other}"),
            }
            .expect("read value");
            out.extend_from_slice(&key);
            out.push(b'\n');
            for v in values {
                out.extend_from_slice(&v);
                out.push(b'\n');
            }
        }
        out
    }

    /// Starts a server on `port` with extra arguments, in `dir`; `None` when it
    /// does not come up (port taken).
    fn start_in(port: u16, dir: &Path, extra: Vec<String>) -> Option<RedisServer> {
        let mut server = RedisServer {
            port,
            dir: dir.to_path_buf(),
            extra,
            child: None,
            owns_dir: false,
        };
        server.spawn().then_some(server)
    }

    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        // A sentinel takes its (rewritable) config file first.
        let sentinel_conf = self.dir.join(format!("sentinel-{port}.conf"));
        if sentinel_conf.exists() {
            cmd.arg(&sentinel_conf).arg("--sentinel");
        } else {
            // No 5 s wait for more replicas before a full sync.
            cmd.args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
            ]);
        }
        let child = cmd
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(if sentinel_conf.exists() {
                vec![]
            } else {
                vec!["--dbfilename".to_owned(), format!("dump-{port}.rdb")]
            })
            .args(["--logfile", &format!("redis-{port}.log")])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (is it installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if answers_ping(self.port) {
                return true;
            }
            sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// Clean shutdown that saves the data set, so [`restart`](Self::restart)
    /// comes back with the same keys. Falls back to SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), "-CONT");
        let _ = raw_command(self.port, "SHUTDOWN SAVE", Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL: no save, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and directory (after [`stop`](Self::stop)).
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        panic!("could not restart redis-server on port {}", self.port);
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "-STOP");
        }
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "-CONT");
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, "-CONT");
        }
        self.kill();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A Redis Sentinel watching one master.
pub struct RedisSentinel {
    server: RedisServer,
}

impl RedisSentinel {
    /// Starts a sentinel that monitors `master_port` as `name` (quorum 1,
    /// down after one second) and waits until it knows `replicas` replicas.
    pub fn start(name: &str, master_port: u16, replicas: usize) -> RedisSentinel {
        let dir = temp_dir("sentinel");
        for _ in 0..20 {
            let port = free_port();
            let conf = format!(
                "sentinel monitor {name} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n"
            );
            std::fs::write(dir.join(format!("sentinel-{port}.conf")), conf)
                .expect("write sentinel config");
            if let Some(mut server) = RedisServer::start_in(port, &dir, Vec::new()) {
                server.owns_dir = true;
                let sentinel = RedisSentinel { server };
                sentinel.wait_for_replicas(name, replicas, Duration::from_secs(20));
                return sentinel;
            }
        }
        panic!("could not start a sentinel");
    }

    fn wait_for_replicas(&self, name: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let out = self.cli(&["SENTINEL", "REPLICAS", name]);
            if out.lines().filter(|l| *l == "slave").count() >= n {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        panic!("sentinel did not see {n} replicas within {timeout:?}");
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn cli(&self, args: &[&str]) -> String {
        self.server.cli(args)
    }

    /// The port of the master the sentinel currently names.
    pub fn master_port(&self, name: &str) -> Option<u16> {
        self.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", name])
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
    }
}

/// Waits until `master`'s replicas have acknowledged every write made
/// before the call.
pub fn wait_replicated(master: &RedisServer, timeout: Duration) {
    let target = master_offset(&master.cli(&["INFO", "replication"]));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if replicas_caught_up(&master.cli(&["INFO", "replication"]), target) {
            return;
        }
        sleep(Duration::from_millis(20));
    }
    panic!("replicas did not catch up within {timeout:?}");
}

fn master_offset(info: &str) -> i64 {
    info.lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0)
}

/// Whether every replica listed in an `INFO replication` answer has
/// acknowledged offset `target` (the master keeps writing on its own, e.g.
/// sentinel hellos, so "caught up with now" may never hold).
fn replicas_caught_up(info: &str, target: i64) -> bool {
    info.lines()
        .filter(|l| l.starts_with("slave") && l.contains("offset="))
        .all(|l| {
            l.split(',')
                .find_map(|kv| kv.strip_prefix("offset="))
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|o| o >= target)
        })
}

/// A Redis cluster of masters with replicas, all on loopback.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    dir: PathBuf,
}

/// Cluster node timeout: short, so failover takes about two seconds.
const NODE_TIMEOUT_MS: u64 = 1000;

impl RedisCluster {
    /// Starts `masters * (1 + replicas_per_master)` nodes, creates the cluster
    /// and waits until every node says `cluster_state:ok` and every replica's
    /// link to its master is up.
    pub fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        let dir = temp_dir("cluster");
        let total = masters * (1 + replicas_per_master);
        let mut nodes = Vec::with_capacity(total);
        let mut seed = random_u64();
        while nodes.len() < total {
            // The cluster bus listens on port + 10000, which must fit too.
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let port = 20000 + ((seed >> 33) % 35536) as u16;
            if !port_is_free(port) || !port_is_free(port + 10000) {
                continue;
            }
            let extra = vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                dir.join(format!("nodes-{port}.conf")).display().to_string(),
                "--cluster-node-timeout".into(),
                NODE_TIMEOUT_MS.to_string(),
            ];
            if let Some(node) = RedisServer::start_in(port, &dir, extra) {
                nodes.push(node);
            }
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas_per_master.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, dir };
        cluster.wait_healthy(Duration::from_secs(20));
        cluster
    }

    /// Seed URLs of all running nodes.
    pub fn urls(&self) -> Vec<String> {
        self.running().map(RedisServer::url).collect()
    }

    fn running(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Indexes into [`nodes`](Self::nodes) of the running masters.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running() && self.role(i) == "master")
            .collect()
    }

    fn role(&self, i: usize) -> String {
        self.nodes[i]
            .cli(&["ROLE"])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// The running master that holds `key` (answers EXISTS without MOVED).
    pub fn master_for_key(&self, key: &str) -> Option<usize> {
        self.masters()
            .into_iter()
            .find(|&i| self.nodes[i].cli(&["EXISTS", key]) == "1")
    }

    /// SIGKILLs the `i`-th running master (in node order); returns its node index.
    pub fn kill_master(&mut self, i: usize) -> usize {
        let idx = self.masters()[i];
        self.kill_node(idx);
        idx
    }

    /// SIGKILLs node `idx`.
    pub fn kill_node(&mut self, idx: usize) {
        self.nodes[idx].kill();
    }

    /// Waits until every master's replicas have acknowledged its writes.
    pub fn wait_replicated(&self, timeout: Duration) {
        let targets: Vec<(usize, i64)> = self
            .masters()
            .into_iter()
            .map(|i| {
                (
                    i,
                    master_offset(&self.nodes[i].cli(&["INFO", "replication"])),
                )
            })
            .collect();
        let deadline = Instant::now() + timeout;
        'outer: while Instant::now() < deadline {
            for &(i, target) in &targets {
                if !replicas_caught_up(&self.nodes[i].cli(&["INFO", "replication"]), target) {
                    sleep(Duration::from_millis(20));
                    continue 'outer;
                }
            }
            return;
        }
        panic!("replicas did not catch up within {timeout:?}");
    }

    /// Waits until every running node says `cluster_state:ok` and every
    /// running replica has its master link up (after a failover the replicas
    /// of a dead master are masters and do not count).
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let ok = self.running().all(|n| {
                n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") && {
                    let info = n.cli(&["INFO", "replication"]);
                    !info.contains("role:slave") || info.contains("master_link_status:up")
                }
            });
            if ok {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        panic!("cluster not healthy within {timeout:?}");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
