//! What the engine derives from the catalog once, at start: each province's range of receipt
//! days and each caravan's price-group rank.

use crate::catalog::{Catalog, HolderIdx};

/// Per province: the first and last receipt day of its holders ((0, 0) for a province with
/// none), the bounds of its waiting list's receipt-day index.
pub(crate) fn receipt_day_ranges(catalog: &Catalog) -> Vec<(i32, i32)> {
    let mut ranges = vec![(i32::MAX, i32::MIN); catalog.provinces().len()];
    for idx in 0..catalog.holder_count() as u32 {
        if let Some(h) = catalog.holder_facts(HolderIdx(idx)) {
            let range = &mut ranges[usize::from(h.province)];
            range.0 = range.0.min(h.receipt_day);
            range.1 = range.1.max(h.receipt_day);
        }
    }
    ranges
        .into_iter()
        .map(|(a, b)| if a > b { (0, 0) } else { (a, b) })
        .collect()
}

/// Each caravan's price group as its rank among the catalog's distinct price groups in sorted
/// order (`A` 0, `B` 1, ...), so the distance between two groups is a difference of ranks.
pub(super) fn price_ranks(catalog: &Catalog) -> Vec<u32> {
    let mut groups: Vec<&str> = catalog
        .caravans()
        .iter()
        .map(|c| c.price_group.as_str())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    catalog
        .caravans()
        .iter()
        .map(|c| groups.binary_search(&c.price_group.as_str()).unwrap_or(0) as u32)
        .collect()
}
