//! The city's bays and the devices registered to them, kept compact: a city has 848,000 bays.
//!
//! Bays are numbered lot by lot ([`BayIdx`]), so a lot's bays are a contiguous range; within a lot
//! their ids are sorted, so a bay is found by binary search in its lot. Bay sensors and bay cameras
//! are held in arenas (one string buffer for all ids, one for all secrets) instead of a map of
//! owned strings: about 60 bytes a device instead of several hundred. Their MQTT password hashes
//! are not kept in memory; a login of a bay device is checked against the database.

use std::hash::{BuildHasher, Hasher};

/// A bay's number: bays are numbered lot by lot, in lot order.
pub type BayIdx = u32;

/// Marks "no device".
const NONE: u32 = u32::MAX;

/// Many strings in one buffer, each found by its index.
#[derive(Debug, Default, Clone)]
pub struct Names {
    bytes: String,
    /// `ends[i]` is where string `i` ends in `bytes`.
    ends: Vec<u32>,
}

impl Names {
    pub fn push(&mut self, name: &str) {
        self.bytes.push_str(name);
        self.ends.push(u32::try_from(self.bytes.len()).unwrap_or(u32::MAX));
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: u32) -> &str {
        let end = self.ends[i as usize] as usize;
        let start = if i == 0 {
            0
        } else {
            self.ends[i as usize - 1] as usize
        };
        &self.bytes[start..end]
    }

    /// Position of `name` among `range`, whose strings are sorted.
    fn find_sorted(&self, range: std::ops::Range<u32>, name: &str) -> Option<u32> {
        let (mut low, mut high) = (range.start, range.end);
        while low < high {
            let mid = low + (high - low) / 2;
            match self.get(mid).cmp(name) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    fn shrink(&mut self) {
        self.bytes.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    /// Bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * 4
    }
}

/// A bay device's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BayDeviceKind {
    Sensor,
    Camera,
}

/// A device registered to one bay, as ingest needs it.
#[derive(Debug, Clone, Copy)]
pub struct BayDevice<'a> {
    pub id: &'a str,
    /// The HMAC key of its signed messages.
    pub secret: &'a str,
    pub bay: BayIdx,
    pub kind: BayDeviceKind,
}

/// Every bay of the city, numbered lot by lot, and the devices registered to them.
#[derive(Debug, Clone, Default)]
pub struct BayTable {
    /// `lot_starts[lot]` is the lot's first bay; the last entry is the number of bays.
    lot_starts: Vec<BayIdx>,
    names: Names,
    /// Per bay: its sensor's and camera's device number (`NONE` without).
    sensor: Vec<u32>,
    camera: Vec<u32>,
    device_ids: Names,
    device_secrets: Names,
    device_bay: Vec<BayIdx>,
    device_kind: Vec<BayDeviceKind>,
    /// Device numbers sorted by the hash of their id, with the hashes, to find a device by id.
    by_hash: Vec<(u64, u32)>,
}

/// Builds a [`BayTable`]: lots are added in lot order, each with its bays.
#[derive(Debug, Default)]
pub struct BayTableBuilder {
    table: BayTable,
}

impl BayTableBuilder {
    /// Adds the next lot's bays (in any order; they are sorted here). Duplicate ids are kept once.
    pub fn lot(&mut self, mut bays: Vec<String>) {
        bays.sort_unstable();
        bays.dedup();
        self.table
            .lot_starts
            .push(u32::try_from(self.table.names.len()).unwrap_or(u32::MAX));
        for bay in &bays {
            self.table.names.push(bay);
        }
    }

    /// Registers a device to a bay (after [`Self::finish_bays`]).
    pub fn device(&mut self, id: &str, secret: &str, bay: BayIdx, kind: BayDeviceKind) {
        let t = &mut self.table;
        let number = u32::try_from(t.device_ids.len()).unwrap_or(NONE);
        t.device_ids.push(id);
        t.device_secrets.push(secret);
        t.device_bay.push(bay);
        t.device_kind.push(kind);
        let slot = match kind {
            BayDeviceKind::Sensor => &mut t.sensor[bay as usize],
            BayDeviceKind::Camera => &mut t.camera[bay as usize],
        };
        *slot = number;
    }

    /// Closes the list of lots; devices are added after.
    pub fn finish_bays(&mut self) {
        let t = &mut self.table;
        t.lot_starts
            .push(u32::try_from(t.names.len()).unwrap_or(u32::MAX));
        t.sensor = vec![NONE; t.names.len()];
        t.camera = vec![NONE; t.names.len()];
    }

    /// The number of a bay added already.
    pub fn find(&self, lot: u32, bay: &str) -> Option<BayIdx> {
        self.table.find(lot, bay)
    }

    pub fn build(mut self) -> BayTable {
        let t = &mut self.table;
        if t.sensor.len() != t.names.len() {
            // finish_bays was not called: close the lots now.
            t.lot_starts
                .push(u32::try_from(t.names.len()).unwrap_or(u32::MAX));
            t.sensor = vec![NONE; t.names.len()];
            t.camera = vec![NONE; t.names.len()];
        }
        t.by_hash = (0..t.device_ids.len() as u32)
            .map(|d| (hash(t.device_ids.get(d)), d))
            .collect();
        t.by_hash.sort_unstable();
        t.names.shrink();
        t.device_ids.shrink();
        t.device_secrets.shrink();
        t.device_bay.shrink_to_fit();
        t.device_kind.shrink_to_fit();
        self.table
    }
}

/// Hashes a device id with keys chosen once per process (the table lives in this process only).
fn hash(id: &str) -> u64 {
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut hasher = KEYS
        .get_or_init(std::collections::hash_map::RandomState::new)
        .build_hasher();
    hasher.write(id.as_bytes());
    hasher.finish()
}

impl BayTable {
    /// The number of bays in the city.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The number of bays of each lot, in lot order.
    pub fn bays_per_lot(&self) -> Vec<u32> {
        self.lot_starts.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// The bays of lot number `lot`.
    pub fn bays_of(&self, lot: u32) -> std::ops::Range<BayIdx> {
        match (
            self.lot_starts.get(lot as usize),
            self.lot_starts.get(lot as usize + 1),
        ) {
            (Some(&start), Some(&end)) => start..end,
            _ => 0..0,
        }
    }

    /// The lot number a bay belongs to.
    pub fn lot_of(&self, bay: BayIdx) -> u32 {
        // The last lot starting at or before `bay` (empty lots share their start with the next).
        (self.lot_starts.partition_point(|&start| start <= bay) - 1) as u32
    }

    /// The number of bay `bay` in lot number `lot`.
    pub fn find(&self, lot: u32, bay: &str) -> Option<BayIdx> {
        self.names.find_sorted(self.bays_of(lot), bay)
    }

    /// A bay's id.
    pub fn name(&self, bay: BayIdx) -> &str {
        self.names.get(bay)
    }

    fn device(&self, number: u32) -> Option<BayDevice<'_>> {
        (number != NONE && (number as usize) < self.device_ids.len()).then(|| BayDevice {
            id: self.device_ids.get(number),
            secret: self.device_secrets.get(number),
            bay: self.device_bay[number as usize],
            kind: self.device_kind[number as usize],
        })
    }

    /// The sensor registered to a bay.
    pub fn sensor(&self, bay: BayIdx) -> Option<BayDevice<'_>> {
        self.device(*self.sensor.get(bay as usize)?)
    }

    /// The camera registered to a bay.
    pub fn camera(&self, bay: BayIdx) -> Option<BayDevice<'_>> {
        self.device(*self.camera.get(bay as usize)?)
    }

    /// A bay device by its id.
    pub fn device_by_id(&self, id: &str) -> Option<BayDevice<'_>> {
        let h = hash(id);
        let start = self.by_hash.partition_point(|&(k, _)| k < h);
        self.by_hash[start..]
            .iter()
            .take_while(|&&(k, _)| k == h)
            .filter_map(|&(_, d)| self.device(d))
            .find(|device| device.id == id)
    }

    /// Bytes held on the heap (for the memory figures).
    pub fn heap_bytes(&self) -> usize {
        self.names.heap_bytes()
            + self.device_ids.heap_bytes()
            + self.device_secrets.heap_bytes()
            + (self.sensor.capacity() + self.camera.capacity() + self.device_bay.capacity()) * 4
            + self.device_kind.capacity()
            + self.by_hash.capacity() * 16
            + self.lot_starts.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> BayTable {
        let mut builder = BayTableBuilder::default();
        builder.lot(vec!["b-2".into(), "b-10".into(), "b-1".into()]);
        builder.lot(vec![]);
        builder.lot(vec!["x".into(), "x".into()]);
        builder.finish_bays();
        builder.device("s-1", "secret-1", 0, BayDeviceKind::Sensor);
        builder.device("c-1", "secret-c", 0, BayDeviceKind::Camera);
        builder.device("s-x", "secret-x", 3, BayDeviceKind::Sensor);
        builder.build()
    }

    #[test]
    fn bays_are_numbered_lot_by_lot_and_found_by_id_within_their_lot() {
        let table = table();
        assert_eq!(table.len(), 4);
        assert_eq!(table.bays_per_lot(), vec![3, 0, 1]);
        assert_eq!(table.find(0, "b-1"), Some(0));
        assert_eq!(table.find(0, "b-10"), Some(1));
        assert_eq!(table.find(0, "b-2"), Some(2));
        assert_eq!(table.find(2, "x"), Some(3));
        assert_eq!(table.find(2, "b-1"), None);
        assert_eq!(table.find(1, "b-1"), None);
        assert_eq!(table.find(9, "b-1"), None);
        assert_eq!(table.name(1), "b-10");
    }

    #[test]
    fn devices_are_found_by_bay_and_by_id() {
        let table = table();
        let sensor = table.sensor(0).unwrap();
        assert_eq!((sensor.id, sensor.secret), ("s-1", "secret-1"));
        assert_eq!(table.camera(0).unwrap().id, "c-1");
        assert!(table.sensor(1).is_none());
        assert_eq!(table.device_by_id("s-x").unwrap().bay, 3);
        assert_eq!(
            table.device_by_id("c-1").unwrap().kind,
            BayDeviceKind::Camera
        );
        assert!(table.device_by_id("s-2").is_none());
    }
}
