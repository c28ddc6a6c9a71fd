//! Helpers of the end-to-end tests that run `miqat serve` as a real process: a generated data
//! set, a server child process (killed on drop) and a small keep-alive HTTP client.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper::header::HeaderMap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The operator token every test server is started with.
pub const OPERATOR_TOKEN: &str = "secret";

/// The receipt cutoff of the generated season's main wave (inclusive).
pub const MAIN_WAVE_CUTOFF: &str = "1386/01/31";

/// The `miqat` binary under test.
pub fn miqat_bin() -> &'static str {
    env!("CARGO_BIN_EXE_miqat")
}

/// Text of process output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One row of `caravans.csv`.
#[derive(Debug, Clone)]
pub struct CaravanRow {
    pub id: String,
    pub province_id: u32,
    pub city: String,
    pub capacity: u32,
}

/// One row of `holders.csv`.
#[derive(Debug, Clone)]
pub struct HolderRow {
    pub national_id: String,
    pub tracking_code: String,
    pub receipt_date: String,
    pub receipt_status: String,
    pub province_id: u32,
    pub city: String,
}

impl HolderRow {
    /// Called by the generated season's main wave (open at once).
    pub fn eligible(&self) -> bool {
        self.receipt_status == "valid" && self.receipt_date.as_str() <= MAIN_WAVE_CUTOFF
    }
}

/// A data set written by `miqat gen` into a temporary directory, with its rows parsed.
pub struct DataSet {
    pub dir: tempfile::TempDir,
    pub caravans: Vec<CaravanRow>,
    pub holders: Vec<HolderRow>,
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let body = std::fs::read_to_string(path).unwrap();
    body.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            assert!(
                !line.contains('"'),
                "quoted CSV fields are not handled: {line}"
            );
            line.split(',').map(str::to_owned).collect()
        })
        .collect()
}

impl DataSet {
    /// Runs `miqat gen --out TMP --holders N --seats S --seed SEED` and reads the rows back.
    pub fn generate(holders: u32, seats: u32, seed: u64) -> DataSet {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(miqat_bin())
            .args(["gen", "--out"])
            .arg(dir.path())
            .args([
                "--holders",
                &holders.to_string(),
                "--seats",
                &seats.to_string(),
                "--seed",
                &seed.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "miqat gen failed: {}",
            text(&out.stderr)
        );
        let caravans = csv_rows(&dir.path().join("caravans.csv"))
            .into_iter()
            .map(|f| CaravanRow {
                id: f[0].clone(),
                province_id: f[1].parse().unwrap(),
                city: f[2].clone(),
                capacity: f[9].parse().unwrap(),
            })
            .collect();
        let holders = csv_rows(&dir.path().join("holders.csv"))
            .into_iter()
            .map(|f| HolderRow {
                national_id: f[0].clone(),
                tracking_code: f[1].clone(),
                receipt_date: f[3].clone(),
                receipt_status: f[4].clone(),
                province_id: f[5].parse().unwrap(),
                city: f[6].clone(),
            })
            .collect();
        DataSet {
            dir,
            caravans,
            holders,
        }
    }

    /// The catalog folder to pass to `--catalog`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Caravan ids by (province id, city).
    pub fn caravans_by_city(&self) -> BTreeMap<(u32, String), Vec<CaravanRow>> {
        let mut map: BTreeMap<(u32, String), Vec<CaravanRow>> = BTreeMap::new();
        for c in &self.caravans {
            map.entry((c.province_id, c.city.clone()))
                .or_default()
                .push(c.clone());
        }
        map
    }

    /// Capacity by caravan id.
    pub fn capacities(&self) -> BTreeMap<String, u32> {
        self.caravans
            .iter()
            .map(|c| (c.id.clone(), c.capacity))
            .collect()
    }
}

/// Held by a test that must not share the machine's cores with another heavy test: the
/// flood test counts honest answers within a time window, and three cluster nodes running
/// beside it on two cores starve it. Tests holding it run one at a time.
pub async fn cores_alone() -> tokio::sync::MutexGuard<'static, ()> {
    static CORES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    CORES.lock().await
}

/// A free TCP port on 127.0.0.1 below Linux's ephemeral range (32768-60999), for a port a
/// test names before a process binds it and binds again after a restart: an ephemeral port
/// can be taken meanwhile by any outgoing connection (the flood tests open thousands), a port
/// below the range only by another listener that names it.
pub fn stable_free_addr() -> SocketAddr {
    let (low, high) = test_ports().unwrap_or((20_000, 31_999));
    free_addr_in(low, high)
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_addr() -> SocketAddr {
    if let Some((low, high)) = test_ports() {
        return free_addr_in(low, high);
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The ports the tests' servers must use, if `MIQAT_TEST_PORTS=LOW-HIGH` (inclusive) says
/// so: for a machine where other programs own the rest. Unset, the tests pick their own.
fn test_ports() -> Option<(u16, u16)> {
    let text = std::env::var("MIQAT_TEST_PORTS").ok()?;
    let parsed = text
        .split_once('-')
        .and_then(|(low, high)| Some((low.trim().parse().ok()?, high.trim().parse().ok()?)))
        .filter(|(low, high): &(u16, u16)| low < high);
    Some(parsed.unwrap_or_else(|| panic!("MIQAT_TEST_PORTS={text:?}: expected LOW-HIGH")))
}

/// A free port of `low..=high`, starting at a place spread by process id and walking on, so
/// the tests of one run never take the same one.
fn free_addr_in(low: u16, high: u16) -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = u32::from(high - low) + 1;
    let base = (std::process::id() % span.div_ceil(2)) * 2;
    for _ in 0..span {
        let step = u32::from(NEXT.fetch_add(1, Ordering::Relaxed));
        let port = low + ((base + step) % span) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().unwrap();
        }
    }
    panic!("no free port between {low} and {high}");
}

/// A `miqat serve` child process; killed (SIGKILL) when dropped.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub stderr_path: PathBuf,
    pub stdout_path: PathBuf,
}

/// How to start a server.
pub struct ServerOptions<'a> {
    pub catalog: &'a Path,
    pub data_dir: &'a Path,
    /// Where stdout/stderr files go.
    pub log_dir: &'a Path,
    /// Names the log files (`NAME.stderr`, `NAME.stdout`).
    pub name: &'a str,
    pub extra_args: Vec<String>,
}

impl Server {
    /// Spawns `miqat serve` on a free port with the operator token set and the per-holder rate
    /// limit off; does not wait for readiness.
    pub fn spawn(options: &ServerOptions<'_>) -> Server {
        Server::spawn_with_env(options, &[])
    }

    /// [`Server::spawn`], then sets (`Some`) or removes (`None`) the given environment
    /// variables of the child.
    pub fn spawn_with_env(options: &ServerOptions<'_>, env: &[(&str, Option<&str>)]) -> Server {
        Server::spawn_at(options, free_addr(), env)
    }

    /// [`Server::spawn_with_env`] with the API on `addr` (a node that restarts where its
    /// clients know it).
    pub fn spawn_at(
        options: &ServerOptions<'_>,
        addr: SocketAddr,
        env: &[(&str, Option<&str>)],
    ) -> Server {
        let stderr_path = options.log_dir.join(format!("{}.stderr", options.name));
        let stdout_path = options.log_dir.join(format!("{}.stdout", options.name));
        let mut command = Command::new(miqat_bin());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MIQAT_") {
                command.env_remove(key);
            }
        }
        command
            .arg("serve")
            .arg("--catalog")
            .arg(options.catalog)
            .arg("--data-dir")
            .arg(options.data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .args(&options.extra_args)
            .env("MIQAT_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("MIQAT_HOLDER_RATE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(File::create(&stdout_path).unwrap()))
            .stderr(Stdio::from(File::create(&stderr_path).unwrap()));
        for (key, value) in env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let child = command.spawn().unwrap();
        Server {
            child: Some(child),
            addr,
            stderr_path,
            stdout_path,
        }
    }

    /// Spawns the server and waits until `GET /readyz` answers 200.
    pub fn start(options: &ServerOptions<'_>) -> Server {
        let mut server = Server::spawn(options);
        server.wait_ready(Duration::from_secs(30));
        server
    }

    /// What the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Polls `GET /readyz` every 50 ms until it answers 200; panics with the server's stderr
    /// after `limit`, or at once if the process exits.
    pub fn wait_ready(&mut self, limit: Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "miqat serve exited ({status}) before it was ready; stderr:\n{}",
                    self.stderr()
                );
            }
            if raw_get_status(self.addr, "/readyz") == Some(200) {
                return;
            }
            if started.elapsed() > limit {
                panic!(
                    "miqat serve on {} not ready after {limit:?}; stderr:\n{}",
                    self.addr,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no shutdown at all, like a power cut for the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (through `kill -TERM PID`).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits for the process to exit, at most `limit`; `None` if it did not.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A one-shot `GET path` over a plain socket; the status code, or `None` if the server does
/// not answer.
pub fn raw_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = Vec::new();
    stream.read_to_end(&mut head).ok()?;
    let head = String::from_utf8_lossy(&head);
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// An answer of the server.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                text(&self.body)
            )
        })
    }

    /// The problem document's `code`, if any.
    pub fn code(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()?
            .get("code")?
            .as_str()
            .map(str::to_owned)
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Status and body, for assertion messages.
    pub fn describe(&self) -> String {
        format!("{} {}", self.status, text(&self.body))
    }
}

/// A keep-alive HTTP/1.1 client of one server.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    timeout: Duration,
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum HttpError {
    /// Connection refused or reset, or the response cut off.
    Transport(String),
    /// No answer within the client's timeout.
    Timeout,
}

impl Http {
    /// A client of the server at `addr`; every request gives up after 30 s.
    pub fn new(addr: SocketAddr) -> Http {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build_http();
        Http {
            client,
            base: format!("http://{addr}"),
            timeout: Duration::from_secs(30),
        }
    }

    /// The same client, giving up on a request after `timeout` instead.
    pub fn with_timeout(mut self, timeout: Duration) -> Http {
        self.timeout = timeout;
        self
    }

    /// Sends one request; `headers` are added as given.
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, HttpError> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match body {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(json).unwrap())
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body)).unwrap();
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| HttpError::Transport(format!("{e:?}")))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| HttpError::Transport(format!("{e:?}")))?
                .to_bytes();
            Ok(Answer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(HttpError::Timeout))
    }

    /// Sends one request and panics if there is no answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Answer {
        match self.try_send(method.clone(), path, headers, body).await {
            Ok(answer) => answer,
            Err(e) => panic!("{method} {path}: no answer: {e:?}"),
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(Method::GET, path, headers, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> Answer {
        self.send(Method::POST, path, headers, Some(body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(Method::DELETE, path, headers, None).await
    }

    /// `GET path` as the holder (credentials in headers).
    pub async fn get_as(&self, holder: &HolderRow, path: &str) -> Answer {
        self.get(path, &holder_headers(holder)).await
    }

    /// `GET path` as the operator.
    pub async fn get_operator(&self, path: &str) -> Answer {
        let auth = format!("Bearer {OPERATOR_TOKEN}");
        self.get(path, &[("authorization", auth.as_str())]).await
    }

    /// Every reservation of the operator list, paging with `next_offset`.
    pub async fn all_reservations(&self, page: usize) -> Vec<serde_json::Value> {
        let mut items = Vec::new();
        let mut offset = 0;
        loop {
            let answer = self
                .get_operator(&format!(
                    "/v1/admin/reservations?limit={page}&offset={offset}"
                ))
                .await;
            assert_eq!(answer.status, 200, "{}", answer.describe());
            let json = answer.json();
            items.extend(json["items"].as_array().unwrap().iter().cloned());
            match json["next_offset"].as_u64() {
                Some(next) => {
                    assert!(next as usize > offset, "next_offset does not advance");
                    offset = next as usize;
                }
                None => return items,
            }
        }
    }
}

/// The `X-National-Id` / `X-Tracking-Code` headers of a holder.
pub fn holder_headers(holder: &HolderRow) -> [(&str, &str); 2] {
    [
        ("x-national-id", holder.national_id.as_str()),
        ("x-tracking-code", holder.tracking_code.as_str()),
    ]
}

/// The body of `POST /v1/reservations`.
pub fn reserve_body(holder: &HolderRow, caravan_id: &str) -> serde_json::Value {
    serde_json::json!({
        "national_id": holder.national_id,
        "tracking_code": holder.tracking_code,
        "caravan_id": caravan_id,
    })
}

/// Credentials in a body.
pub fn credentials_body(holder: &HolderRow) -> serde_json::Value {
    serde_json::json!({
        "national_id": holder.national_id,
        "tracking_code": holder.tracking_code,
    })
}
