//! The unmeasured side of a run: reading the schedule and provinces, moving a wave's opening,
//! and the operator's reservation export the after-run check reads.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::tls::{ClientTls, Connector, tls_failure};

/// A wave as `GET /v1/waves` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Wave {
    /// Name.
    pub name: String,
    /// Receipt cutoff (Jalali).
    pub receipts_until: String,
    /// Opening, RFC 3339.
    pub opens_at: String,
    /// Provinces, or all.
    #[serde(default)]
    pub provinces: Option<Vec<u32>>,
    /// Whether this wave also admits receipts earlier than the waves that call them (missing:
    /// false). Left out of a PUT when false, so servers that predate it accept the body.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admits_earlier_receipts: bool,
    /// Whether the wave has a waiting room (missing: false); never sent back.
    #[serde(default, skip_serializing)]
    pub waiting_room: bool,
}

impl Wave {
    /// Whether the wave includes `province_id`.
    pub fn includes(&self, province_id: u32) -> bool {
        self.provinces
            .as_ref()
            .is_none_or(|ids| ids.contains(&province_id))
    }

    /// The opening as an instant.
    pub fn opens(&self) -> anyhow::Result<jiff::Timestamp> {
        self.opens_at.parse().with_context(|| {
            format!(
                "wave {:?}: opens_at {:?} is not RFC 3339",
                self.name, self.opens_at
            )
        })
    }
}

/// Moves every wave by the same amount so that `waves[anchor]` opens at `opens`: the
/// schedule's spacing is kept, so a later wave (a reserve wave whose cutoff covers the main
/// wave's receipts) cannot be left open in the past while the main one waits.
pub fn shift_schedule(
    waves: &mut [Wave],
    anchor: usize,
    opens: jiff::Timestamp,
) -> anyhow::Result<()> {
    let Some(anchor_wave) = waves.get(anchor) else {
        bail!("no wave {anchor} to move");
    };
    let delta = opens.duration_since(anchor_wave.opens()?);
    for wave in waves.iter_mut() {
        let moved = wave
            .opens()?
            .checked_add(delta)
            .with_context(|| format!("wave {:?} cannot move that far", wave.name))?;
        wave.opens_at = moved.to_string();
    }
    Ok(())
}

/// A province as `GET /v1/provinces` shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Province {
    /// Id.
    pub id: u32,
    /// English name.
    pub name_en: String,
    /// Seats.
    pub seats_total: u64,
    /// Free seats.
    pub seats_free: u64,
}

/// A caravan as the province list shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Caravan {
    /// Id.
    pub id: String,
    /// Seats.
    pub capacity: u32,
    /// Free seats.
    pub seats_free: u32,
}

/// A row of the operator's CSV export.
#[derive(Debug, Clone, Deserialize)]
pub struct ExportedReservation {
    /// Id.
    pub id: String,
    /// Holder.
    pub national_id: String,
    /// Caravan.
    pub caravan_id: String,
    /// Status.
    pub status: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
}

impl ExportedReservation {
    /// Whether it holds a seat (offered, held or confirmed).
    pub fn is_live(&self) -> bool {
        matches!(self.status.as_str(), "offered" | "held" | "confirmed")
    }
}

/// A small client for unmeasured calls.
#[derive(Clone)]
pub struct Admin {
    client: Client<Connector, Full<Bytes>>,
    base: String,
    authorization: Option<String>,
    /// The nodes of `base` (one, or a cluster's) and the one last found taking writes.
    nodes: std::sync::Arc<Vec<String>>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Sends of one admin request at most while following a cluster's leader.
const ADMIN_SENDS_MAX: usize = 8;

/// A raw answer.
pub struct Raw {
    /// Status.
    pub status: u16,
    /// `Retry-After` in seconds, if given as a number.
    pub retry_after_s: Option<f64>,
    /// Body.
    pub body: Bytes,
}

impl Admin {
    /// A client of `base`, with the operator's token if any.
    pub fn new(base: &str, token: Option<&str>) -> Admin {
        Admin::with_tls(base, token, &ClientTls::default())
    }

    /// [`Admin::new`] for `http://` or `https://`, with these TLS settings.
    /// `base` may list a cluster's nodes, comma-separated: requests then follow
    /// `421 not_leader` to the leader and pass over nodes that do not answer.
    pub fn with_tls(base: &str, token: Option<&str>, tls: &ClientTls) -> Admin {
        let nodes: Vec<String> = base
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        Admin {
            client: Client::builder(TokioExecutor::new()).build(tls.connector()),
            base: base.trim_end_matches('/').to_owned(),
            authorization: token.map(|t| format!("Bearer {t}")),
            nodes: std::sync::Arc::new(nodes),
            current: std::sync::Arc::default(),
        }
    }

    /// Moves on to the next node of a cluster.
    fn next_node(&self) {
        let n = self.nodes.len().max(1);
        let current = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.current
            .store((current + 1) % n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the operator's token was given.
    pub fn is_operator(&self) -> bool {
        self.authorization.is_some()
    }

    /// Sends one request (30 s timeout), following a cluster's leader if `base` lists nodes.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> anyhow::Result<Raw> {
        let clustered = self.nodes.len() > 1;
        let mut sends = 0;
        loop {
            sends += 1;
            let node = self.current.load(std::sync::atomic::Ordering::Relaxed);
            let base = self.nodes.get(node).unwrap_or(&self.base);
            let result = self
                .send_to(base, method.clone(), path, headers, body.clone())
                .await;
            if !clustered || sends >= ADMIN_SENDS_MAX {
                return result.map(|(raw, _)| raw);
            }
            match result {
                Ok((raw, leader)) if raw.status == 421 => {
                    let named = leader.and_then(|l| {
                        self.nodes
                            .iter()
                            .position(|b| b.split_once("://").is_some_and(|(_, a)| a == l.trim()))
                    });
                    match named {
                        Some(n) if n != node => {
                            self.current.store(n, std::sync::atomic::Ordering::Relaxed)
                        }
                        _ => {
                            self.next_node();
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                Ok((raw, _)) => return Ok(raw),
                Err(e) if tls_failure(&e).is_some() => return Err(e),
                Err(_) => {
                    self.next_node();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// One exchange with the node at `base`; the answer and its `Miqat-Leader` header.
    async fn send_to(
        &self,
        base: &str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> anyhow::Result<(Raw, Option<String>)> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{base}{path}"));
        if let Some(auth) = &self.authorization {
            request = request.header("authorization", auth.as_str());
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.unwrap_or_default()))?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let retry_after_s = header("retry-after")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0);
            let leader = header("miqat-leader");
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((
                Raw {
                    status,
                    retry_after_s,
                    body,
                },
                leader,
            ))
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .with_context(|| format!("{method} {path}: no answer within 30 s"))?
            .with_context(|| format!("{method} {path} to {base}"))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let raw = self.send(Method::GET, path, &[], None).await?;
        if raw.status != 200 {
            bail!(
                "GET {path}: {} {}",
                raw.status,
                String::from_utf8_lossy(&raw.body)
            );
        }
        serde_json::from_slice(&raw.body).with_context(|| format!("GET {path}: unexpected body"))
    }

    /// Waits until `GET /readyz` answers 200, at most `limit`; a TLS failure ends the wait
    /// at once (waiting does not make an untrusted certificate trusted).
    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let until = std::time::Instant::now() + limit;
        loop {
            match self.send(Method::GET, "/readyz", &[], None).await {
                Ok(raw) if raw.status == 200 => return Ok(()),
                Err(e) if tls_failure(&e).is_some() => {
                    bail!("{}: {}", self.base, tls_failure(&e).unwrap_or_default())
                }
                // A cluster's followers are not ready (only the leader takes writes).
                Ok(_) if self.nodes.len() > 1 && std::time::Instant::now() <= until => {
                    self.next_node();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ if std::time::Instant::now() > until => {
                    bail!("{} was not ready within {limit:?}", self.base)
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The schedule.
    pub async fn waves(&self) -> anyhow::Result<Vec<Wave>> {
        self.get_json("/v1/waves").await
    }

    /// Replaces the schedule (operator).
    pub async fn put_waves(&self, waves: &[Wave]) -> anyhow::Result<()> {
        let body = Bytes::from(serde_json::to_vec(waves)?);
        let raw = self
            .send(Method::PUT, "/v1/admin/waves", &[], Some(body))
            .await?;
        if raw.status != 200 {
            bail!(
                "PUT /v1/admin/waves: {} {}",
                raw.status,
                String::from_utf8_lossy(&raw.body)
            );
        }
        Ok(())
    }

    /// Provinces with free seats.
    pub async fn provinces(&self) -> anyhow::Result<Vec<Province>> {
        self.get_json("/v1/provinces").await
    }

    /// A province's caravans.
    pub async fn caravans(&self, province: u32) -> anyhow::Result<Vec<Caravan>> {
        self.get_json(&format!("/v1/provinces/{province}/caravans"))
            .await
    }

    /// Every reservation (operator CSV export).
    pub async fn export(&self) -> anyhow::Result<Vec<ExportedReservation>> {
        let raw = self
            .send(
                Method::GET,
                "/v1/admin/reservations",
                &[("accept", "text/csv")],
                None,
            )
            .await?;
        if raw.status != 200 {
            bail!(
                "GET /v1/admin/reservations: {} {}",
                raw.status,
                String::from_utf8_lossy(&raw.body)
            );
        }
        let mut reader = csv::Reader::from_reader(raw.body.as_ref());
        let mut rows = Vec::new();
        for (n, row) in reader.deserialize::<ExportedReservation>().enumerate() {
            rows.push(row.with_context(|| format!("reservation export line {}", n + 2))?);
        }
        Ok(rows)
    }
}
