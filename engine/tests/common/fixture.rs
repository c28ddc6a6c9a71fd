//! The fixture language: a catalog and a season written as a few lines of text, built through
//! the public `CatalogBuilder` and `Season` types.
//!
//! ```text
//! province 1 North شمال: city A: a1 cap 2, a2 cap 1 medina_second group B; city B: b1 cap 1
//! province 2 South: city C: c1 cap 2; city D: d1..=d7 cap 1 group C departs day 18009
//! caravans: manager Manager {id}; phone 021-5555; price 1500000000
//! holders: ids from 1000; receipts from day 100; 3 per city; id 999 needs_conversion in A
//! wave main until day 150 opens T0
//! stages: documents 10s, first_payment 20s, medical 30s, final_payment 40s; offers 5s
//! ```
//!
//! Grammar, one statement per line (a line ending in `,` goes on on the next; blank lines and
//! `#` comments are skipped; the order of the lines does not matter except that provinces,
//! caravans and holders are added in the order written):
//!
//! ```text
//! province  = "province" ID NAME [NAME_FA] ":" city (";" city)*
//! city      = "city" NAME ":" caravan ("," caravan)*
//! caravan   = CARAVAN_IDS "cap" N [ROUTE] ["group" G] ["departs day" DAY]
//!             CARAVAN_IDS is one id, or a range "x1..x3" (x1, x2) or "x1..=x3" (x1, x2, x3);
//!             ROUTE is medina_first (the default) or medina_second; group A, day 18000 by default
//! caravans  = "caravans:" default (";" default)*      every caravan's manager, phone, price
//! default   = "manager" TEXT ({id} is the caravan's id) | "phone" TEXT | "price" N
//! holders   = "holders:" item ((";" | ",") item)*
//! item      = "ids from" B | "ids checked from" B      holder number n has national ID B + n,
//!                                                      or (checked) the nine digits B + n and
//!                                                      their check digit; default `ids from 0`
//!           | "receipts from day" D | "receipts on day" D   holder n's receipt day is D + n, or
//!                                                      D for all; default `from day 100`
//!           | N "per city"                             N holders in every city, in the order
//!                                                      the cities are declared, numbered on
//!                                                      from the last numbered holder
//!           | CITY RANGE                               holders numbered RANGE ("0..7") in CITY
//!           | n [status] ["day" D] "in" CITY           one numbered holder
//!           | "id" NID [status] ["day" D] "in" CITY    one holder by literal national ID
//!             status is needs_conversion (or valid, the default); holder n's tracking code is
//!             "t{n}" and receipt number "r{n}" (a literal ID's are "t{NID}" and "r{NID}")
//! wave      = "wave" NAME "until day" DAY "opens" TIME ["provinces" ID ("," ID)*]
//!             ["admits_earlier"]
//! stages    = "stages:" (STAGE DURATION ("," STAGE DURATION)* | "none") "; offers" DURATION
//! TIME      = "T0" | "T0+" DURATION | "T0-" DURATION | milliseconds since the epoch
//! DURATION  = N ("ms" | "s" | "m" | "h" | "d")
//! ```
//!
//! A fixture that does not parse panics with its line number and what was expected.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use miqat_engine::calendar::national_id_check_digit;
use miqat_engine::catalog::{Caravan, Catalog, CatalogBuilder, ReceiptStatus, Route};
use miqat_engine::season::{Schedule, Season, Stage, Wave};

/// The instant `T0` of every fixture (2020-09-13T12:26:40Z), where a test's clock starts.
pub const T0: i64 = 1_600_000_000_000;

/// A parsed fixture.
pub struct Fixture {
    pub catalog: Arc<Catalog>,
    pub season: Season,
    /// National ID of holder number `n`, by the fixture's `ids` rule.
    ids: IdRule,
}

impl Fixture {
    /// The national ID of holder number `n` under the fixture's `ids` rule.
    pub fn national_id(&self, n: u64) -> u64 {
        self.ids.national_id(n)
    }
}

/// Parses `text`; panics with the line number if it is not a fixture.
pub fn parse(text: &str) -> Fixture {
    let mut p = Parts::default();
    let mut statement = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        statement.push_str(line);
        if line.ends_with(',') {
            statement.push(' ');
            continue;
        }
        if let Err(e) = p.statement(&statement) {
            panic!("fixture line {}: {e}\n  {statement}", i + 1);
        }
        statement.clear();
    }
    assert!(statement.is_empty(), "fixture ends in a `,`");
    p.build()
}

/// Formats an instant as the fixture writes it: `T0`, `T0+10s`, `T0-1500ms`.
pub fn time(ms: i64) -> String {
    let delta = ms - T0;
    let sign = if delta < 0 { '-' } else { '+' };
    match delta.unsigned_abs() {
        0 => "T0".to_owned(),
        d if d % 1000 == 0 => format!("T0{sign}{}s", d / 1000),
        d => format!("T0{sign}{d}ms"),
    }
}

/// Parses a duration `10s`, `1500ms`, `2m`, `1h`, `1d` into milliseconds.
pub fn duration_ms(text: &str) -> Result<i64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {text:?} has no unit (ms, s, m, h, d)"))?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n.parse().map_err(|_| format!("bad duration {text:?}"))?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("unknown unit in {text:?} (ms, s, m, h, d)")),
    };
    Ok(n * unit_ms)
}

/// Parses an instant: `T0`, `T0+10s`, `T0-1m` or milliseconds since the epoch.
pub fn time_ms(text: &str) -> Result<i64, String> {
    if let Some(rest) = text.strip_prefix("T0") {
        return match rest.chars().next() {
            None => Ok(T0),
            Some('+') => Ok(T0 + duration_ms(&rest[1..])?),
            Some('-') => Ok(T0 - duration_ms(&rest[1..])?),
            _ => Err(format!("bad time {text:?}")),
        };
    }
    text.parse().map_err(|_| format!("bad time {text:?}"))
}

#[derive(Clone, Copy)]
struct IdRule {
    base: u64,
    checked: bool,
}

impl IdRule {
    fn national_id(self, n: u64) -> u64 {
        let first = self.base + n;
        if self.checked {
            first * 10 + u64::from(national_id_check_digit(first))
        } else {
            first
        }
    }
}

struct CaravanLine {
    ids: Vec<String>,
    city: String,
    capacity: u32,
    route: Route,
    group: String,
    departure_day: i32,
}

struct ProvinceLine {
    id: u32,
    name_en: String,
    name_fa: String,
    cities: Vec<String>,
}

/// One holder to add: national ID, tracking code, receipt number, day, status, city.
struct HolderLine {
    national_id: Option<u64>,
    number: u64,
    day: Option<i32>,
    status: ReceiptStatus,
    city: String,
}

enum Receipts {
    From(i32),
    On(i32),
}

/// What the lines said, before anything is built.
struct Parts {
    provinces: Vec<ProvinceLine>,
    caravans: Vec<CaravanLine>,
    manager: String,
    phone: String,
    price_rial: u64,
    ids: IdRule,
    receipts: Receipts,
    holders: Vec<HolderLine>,
    /// `N per city` items, kept in place among the other holder items.
    per_city: Vec<(usize, u32)>,
    waves: Vec<Wave>,
    stages: Option<(Vec<(Stage, i64)>, i64)>,
}

impl Default for Parts {
    fn default() -> Parts {
        Parts {
            provinces: Vec::new(),
            caravans: Vec::new(),
            manager: "M".into(),
            phone: "0".into(),
            price_rial: 1,
            ids: IdRule {
                base: 0,
                checked: false,
            },
            receipts: Receipts::From(100),
            holders: Vec::new(),
            per_city: Vec::new(),
            waves: Vec::new(),
            stages: None,
        }
    }
}

fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("expected {what}, found {text:?}"))
}

/// Expands `x1..x3` / `x1..=x3` (same prefix) into ids; a plain id stays itself.
fn expand_ids(text: &str) -> Result<Vec<String>, String> {
    let Some((from, to)) = text.split_once("..") else {
        return Ok(vec![text.to_owned()]);
    };
    let (to, inclusive) = match to.strip_prefix('=') {
        Some(to) => (to, true),
        None => (to, false),
    };
    let split = |s: &str| -> Result<(String, u32), String> {
        let at = s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        Ok((s[..at].to_owned(), number(&s[at..], "a numbered id")?))
    };
    let ((prefix, a), (prefix_to, b)) = (split(from)?, split(to)?);
    if prefix != prefix_to {
        return Err(format!("range {text:?} changes prefix"));
    }
    let end = if inclusive { b + 1 } else { b };
    Ok((a..end).map(|i| format!("{prefix}{i}")).collect())
}

/// Expands a holder range `0..7` / `0..=6`.
fn expand_numbers(text: &str) -> Result<std::ops::Range<u64>, String> {
    let (from, to) = text
        .split_once("..")
        .ok_or_else(|| format!("expected a range like 0..7, found {text:?}"))?;
    let a: u64 = number(from, "a holder number")?;
    match to.strip_prefix('=') {
        Some(to) => Ok(a..number::<u64>(to, "a holder number")? + 1),
        None => Ok(a..number(to, "a holder number")?),
    }
}

impl Parts {
    fn statement(&mut self, line: &str) -> Result<(), String> {
        let (head, _) = line.split_once(' ').unwrap_or((line, ""));
        match head {
            "province" => self.province(line),
            "caravans:" => self.caravan_defaults(&line["caravans:".len()..]),
            "holders:" => self.holder_items(&line["holders:".len()..]),
            "wave" => self.wave(&words(line)[1..]),
            "stages:" => self.stages(&line["stages:".len()..]),
            other => Err(format!(
                "unknown statement {other:?} (province, caravans:, holders:, wave, stages:)"
            )),
        }
    }

    fn province(&mut self, line: &str) -> Result<(), String> {
        let (head, body) = line
            .split_once(':')
            .ok_or("expected `province ID NAME [NAME_FA]: city ...`")?;
        let w = words(head);
        let (id, name_en) = match w.as_slice() {
            [_, id, name, ..] if w.len() <= 4 => (number(id, "a province id")?, *name),
            _ => return Err("expected `province ID NAME [NAME_FA]:`".into()),
        };
        let name_fa = w.get(3).copied().unwrap_or(name_en);
        let mut cities = Vec::new();
        for city in body.split(';') {
            let (name, caravans) = city
                .trim()
                .strip_prefix("city ")
                .and_then(|c| c.split_once(':'))
                .ok_or_else(|| format!("expected `city NAME: caravans`, found {city:?}"))?;
            let name = name.trim().to_owned();
            for caravan in caravans.split(',').filter(|c| !c.trim().is_empty()) {
                self.caravan(&name, caravan)?;
            }
            cities.push(name);
        }
        self.provinces.push(ProvinceLine {
            id,
            name_en: name_en.into(),
            name_fa: name_fa.into(),
            cities,
        });
        Ok(())
    }

    fn caravan(&mut self, city: &str, text: &str) -> Result<(), String> {
        let w = words(text);
        let [ids, "cap", capacity, rest @ ..] = w.as_slice() else {
            return Err(format!("expected `ID cap N ...`, found {text:?}"));
        };
        let mut c = CaravanLine {
            ids: expand_ids(ids)?,
            city: city.to_owned(),
            capacity: number(capacity, "a capacity")?,
            route: Route::MedinaFirst,
            group: "A".into(),
            departure_day: 18_000,
        };
        let mut rest = rest;
        while let [word, tail @ ..] = rest {
            rest = match (*word, tail) {
                ("group", [g, tail @ ..]) => {
                    c.group = (*g).to_owned();
                    tail
                }
                ("departs", ["day", d, tail @ ..]) => {
                    c.departure_day = number(d, "a departure day")?;
                    tail
                }
                (route, tail) => {
                    c.route = Route::parse(route).ok_or_else(|| {
                        format!("unknown caravan attribute {route:?} (a route, group, departs day)")
                    })?;
                    tail
                }
            };
        }
        self.caravans.push(c);
        Ok(())
    }

    fn caravan_defaults(&mut self, body: &str) -> Result<(), String> {
        for item in body.split(';') {
            let (key, value) = item.trim().split_once(' ').ok_or("expected `KEY VALUE`")?;
            let value = value.trim();
            match key {
                "manager" => self.manager = value.into(),
                "phone" => self.phone = value.into(),
                "price" => self.price_rial = number(value, "a price in rial")?,
                _ => return Err(format!("unknown caravan default {key:?}")),
            }
        }
        Ok(())
    }

    fn holder_items(&mut self, body: &str) -> Result<(), String> {
        for item in body.split([';', ',']) {
            let w = words(item);
            match w.as_slice() {
                [] => {}
                ["ids", "from", b] => self.ids.base = number(b, "an id base")?,
                ["ids", "checked", "from", b] => {
                    self.ids = IdRule {
                        base: number(b, "an id base")?,
                        checked: true,
                    };
                }
                ["receipts", "from", "day", d] => {
                    self.receipts = Receipts::From(number(d, "a day")?);
                }
                ["receipts", "on", "day", d] => self.receipts = Receipts::On(number(d, "a day")?),
                [n, "per", "city"] => {
                    let n = number(n, "a count")?;
                    self.per_city.push((self.holders.len(), n));
                }
                ["id", nid, rest @ ..] => {
                    let nid: u64 = number(nid, "a national ID")?;
                    self.one_holder(Some(nid), nid, rest)?;
                }
                [city, range] if range.contains("..") => {
                    for n in expand_numbers(range)? {
                        self.holders.push(HolderLine {
                            national_id: None,
                            number: n,
                            day: None,
                            status: ReceiptStatus::Valid,
                            city: (*city).to_owned(),
                        });
                    }
                }
                [n, rest @ ..] => {
                    let n = number(n, "a holder number, `id NID`, `N per city` or a setting")?;
                    self.one_holder(None, n, rest)?;
                }
            }
        }
        Ok(())
    }

    fn one_holder(&mut self, nid: Option<u64>, n: u64, mut rest: &[&str]) -> Result<(), String> {
        let mut h = HolderLine {
            national_id: nid,
            number: n,
            day: None,
            status: ReceiptStatus::Valid,
            city: String::new(),
        };
        while let [word, tail @ ..] = rest {
            rest = match (*word, tail) {
                ("day", [d, tail @ ..]) => {
                    h.day = Some(number(d, "a receipt day")?);
                    tail
                }
                ("in", [city]) => {
                    h.city = (*city).to_owned();
                    &[]
                }
                (status, tail) => {
                    h.status = ReceiptStatus::parse(status)
                        .ok_or_else(|| format!("unknown holder attribute {status:?}"))?;
                    tail
                }
            };
        }
        if h.city.is_empty() {
            return Err("a holder needs `in CITY`".into());
        }
        self.holders.push(h);
        Ok(())
    }

    fn wave(&mut self, w: &[&str]) -> Result<(), String> {
        let [name, "until", "day", day, "opens", at, rest @ ..] = w else {
            return Err("expected `wave NAME until day D opens TIME ...`".into());
        };
        let mut wave = Wave {
            name: (*name).to_owned(),
            receipts_until_day: number(day, "a receipt day")?,
            opens_at_ms: time_ms(at)?,
            provinces: None,
            admits_earlier_receipts: false,
        };
        let mut rest = rest;
        while let [word, tail @ ..] = rest {
            rest = match (*word, tail) {
                ("provinces", [list, tail @ ..]) => {
                    let ids: Result<Vec<u32>, String> = list
                        .split(',')
                        .map(|p| number(p, "a province id"))
                        .collect();
                    wave.provinces = Some(ids?);
                    tail
                }
                ("admits_earlier", tail) => {
                    wave.admits_earlier_receipts = true;
                    tail
                }
                (other, _) => return Err(format!("unknown wave attribute {other:?}")),
            };
        }
        self.waves.push(wave);
        Ok(())
    }

    fn stages(&mut self, body: &str) -> Result<(), String> {
        let (list, offers) = body
            .split_once(';')
            .ok_or("expected `stages: ...; offers DURATION`")?;
        let offers = match words(offers).as_slice() {
            ["offers", d] => duration_ms(d)?,
            _ => return Err("expected `offers DURATION` after the stages".into()),
        };
        let mut stages = Vec::new();
        if list.trim() != "none" {
            for item in list.split(',') {
                let [stage, d] = words(item)[..] else {
                    return Err(format!("expected `STAGE DURATION`, found {item:?}"));
                };
                let stage =
                    Stage::parse(stage).ok_or_else(|| format!("unknown stage {stage:?}"))?;
                stages.push((stage, duration_ms(d)?));
            }
        }
        self.stages = Some((stages, offers));
        Ok(())
    }

    fn build(self) -> Fixture {
        let mut b = CatalogBuilder::new();
        let mut cities = Vec::new();
        for p in &self.provinces {
            let province = b.add_province(p.id, &p.name_en, &p.name_fa).unwrap();
            for name in &p.cities {
                assert!(
                    cities.iter().all(|(n, _, _)| n != name),
                    "fixture: city {name:?} is declared twice"
                );
                cities.push((name.clone(), province, b.city(province, name)));
            }
        }
        let city = |name: &str| {
            let found = cities.iter().find(|(n, _, _)| n == name);
            let (_, province, city) = found.unwrap_or_else(|| panic!("fixture: no city {name:?}"));
            (*province, *city)
        };
        for c in &self.caravans {
            let (province, city) = city(&c.city);
            for id in &c.ids {
                b.add_caravan(Caravan {
                    id: id.clone(),
                    province,
                    city,
                    manager: self.manager.replace("{id}", id),
                    phone: self.phone.clone(),
                    price_group: c.group.clone(),
                    route: c.route,
                    departure_day: c.departure_day,
                    price_rial: self.price_rial,
                    capacity: c.capacity,
                })
                .unwrap();
            }
        }
        let day = |n: u64| match self.receipts {
            Receipts::From(d) => d + i32::try_from(n).unwrap(),
            Receipts::On(d) => d,
        };
        let mut per_city = self.per_city.iter().peekable();
        let mut next_number = 0u64;
        let mut add_per_city = |b: &mut CatalogBuilder, count: u32| {
            for (_, province, city) in &cities {
                for _ in 0..count {
                    let n = next_number;
                    next_number += 1;
                    let nid = self.ids.national_id(n);
                    b.add_holder(
                        nid,
                        &format!("t{n}"),
                        &format!("r{n}"),
                        day(n),
                        ReceiptStatus::Valid,
                        *province,
                        *city,
                    )
                    .unwrap();
                }
            }
        };
        for (i, h) in self.holders.iter().enumerate() {
            while let Some((_, count)) = per_city.next_if(|(at, _)| *at == i) {
                add_per_city(&mut b, *count);
            }
            let (province, city) = city(&h.city);
            let (nid, label) = match h.national_id {
                Some(nid) => (nid, nid),
                None => (self.ids.national_id(h.number), h.number),
            };
            let receipt_day = h.day.unwrap_or_else(|| day(h.number));
            b.add_holder(
                nid,
                &format!("t{label}"),
                &format!("r{label}"),
                receipt_day,
                h.status,
                province,
                city,
            )
            .unwrap_or_else(|e| panic!("fixture: holder {label}: {e}"));
        }
        for (_, count) in per_city {
            add_per_city(&mut b, *count);
        }
        let (stages, offer_deadline_ms) = self
            .stages
            .unwrap_or_else(|| panic!("fixture: no `stages:` line"));
        Fixture {
            catalog: Arc::new(b.build()),
            season: Season {
                schedule: Schedule { waves: self.waves },
                stages,
                offer_deadline_ms,
                rooms: Vec::new(),
            },
            ids: self.ids,
        }
    }
}
