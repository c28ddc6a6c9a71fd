//! The unmeasured side of a run: reading the schedule and provinces, moving a wave's opening,
//! and the operator's reservation export the after-run check reads.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

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
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    authorization: Option<String>,
}

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
        Admin {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: base.trim_end_matches('/').to_owned(),
            authorization: token.map(|t| format!("Bearer {t}")),
        }
    }

    /// Whether the operator's token was given.
    pub fn is_operator(&self) -> bool {
        self.authorization.is_some()
    }

    /// Sends one request (30 s timeout).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> anyhow::Result<Raw> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base));
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
            let retry_after_s = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0);
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok(Raw {
                status,
                retry_after_s,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .with_context(|| format!("{method} {path}: no answer within 30 s"))?
            .with_context(|| format!("{method} {path} to {}", self.base))
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

    /// Waits until `GET /readyz` answers 200, at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let until = std::time::Instant::now() + limit;
        loop {
            match self.send(Method::GET, "/readyz", &[], None).await {
                Ok(raw) if raw.status == 200 => return Ok(()),
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
