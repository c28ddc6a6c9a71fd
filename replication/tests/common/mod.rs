//! Shared by the replication tests: a small generated catalog and season, and engines over
//! them without a log, as the cluster runs them.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use miqat_engine::catalog::{Catalog, HolderIdx};
use miqat_engine::clock::ManualClock;
use miqat_engine::datagen::{GenConfig, generate};
use miqat_engine::engine::WriteCommand;
use miqat_engine::load::{load_catalog, load_season};
use miqat_engine::season::Season;
use miqat_engine::{Engine, EngineConfig};

/// A generated data set, loaded.
pub struct Data {
    pub _dir: tempfile::TempDir,
    pub catalog: Arc<Catalog>,
    pub season: Season,
}

impl Data {
    pub fn new() -> Data {
        let dir = tempfile::tempdir().unwrap();
        generate(
            dir.path(),
            &GenConfig {
                holders: 400,
                seats: 120,
                seed: 7,
                opens_at: None,
            },
            &mut |_| {},
        )
        .unwrap();
        let catalog = load_catalog(dir.path()).unwrap();
        let season = load_season(&dir.path().join("season.toml"), &catalog).unwrap();
        Data {
            _dir: dir,
            catalog: Arc::new(catalog),
            season,
        }
    }

    /// An empty engine without a log, its clock at the first wave's opening.
    pub fn engine(&self) -> Arc<Engine> {
        Engine::in_memory(
            Arc::clone(&self.catalog),
            self.season.clone(),
            Arc::new(ManualClock::new(self.opening_ms())),
            EngineConfig::default(),
        )
        .unwrap()
    }

    /// The first wave's opening.
    pub fn opening_ms(&self) -> i64 {
        self.season
            .schedule
            .waves
            .iter()
            .map(|w| w.opens_at_ms)
            .min()
            .unwrap()
    }

    /// A reserve command for holder `h` in the first caravan of their province.
    pub fn reserve(&self, h: u32, key: &[u8]) -> WriteCommand {
        let holder = HolderIdx(h);
        let facts = self.catalog.holder_facts(holder).unwrap();
        let caravan = self
            .catalog
            .caravans_of_province(facts.province)
            .first()
            .copied()
            .unwrap();
        WriteCommand::Reserve {
            holder,
            caravan,
            key: key.to_vec(),
        }
    }
}

/// A fresh directory for a store.
pub fn store_dir(root: &Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
