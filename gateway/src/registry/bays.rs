//! The city's bays and the devices registered to them, kept compact: a city has 848,000 bays.
//!
//! Bays are numbered lot by lot ([`BayIdx`]), so a lot's bays are a contiguous range; within a lot
//! their ids are sorted, so a bay is found by binary search in its lot. Bay sensors and bay cameras
//! are held in parallel vectors — a keyed 64-bit hash of the id, the key (16 bytes when it is
//! 16 random bytes as the platform issues them), the bay — instead of a map of owned strings:
//! about 35 bytes a device instead of several hundred. Their MQTT password hashes are not kept in
//! memory; a login of a bay device is checked against the database.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

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
        self.ends
            .push(u32::try_from(self.bytes.len()).unwrap_or(u32::MAX));
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

/// A bay device's HMAC key: its text as issued, or the 16 random bytes it encodes (URL-safe
/// base64 without padding, as the platform issues bay devices' keys), kept in 16 bytes.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    Text(&'a str),
    Packed(&'a [u8; 16]),
}

impl Key<'_> {
    /// The key's bytes as the device signs with them: the UTF-8 bytes of its text.
    pub fn bytes(&self) -> Cow<'_, [u8]> {
        match self {
            Self::Text(text) => Cow::Borrowed(text.as_bytes()),
            Self::Packed(raw) => Cow::Owned(URL_SAFE_NO_PAD.encode(raw).into_bytes()),
        }
    }
}

/// A device registered to one bay, as ingest needs it.
#[derive(Debug, Clone, Copy)]
pub struct BayDevice<'a> {
    /// The device's key.
    pub key: Key<'a>,
    pub bay: BayIdx,
    pub kind: BayDeviceKind,
    id_hash: u64,
}

impl BayDevice<'_> {
    /// Whether this is device `id`. Ids are kept as 64-bit keyed hashes: telling two ids apart
    /// by them fails with a chance of 2⁻⁶⁴, and a signature still needs the device's own key.
    pub fn is(&self, id: &str) -> bool {
        self.id_hash == hash(id)
    }
}

/// The devices' keys: packed when every key packs, else as text.
#[derive(Debug, Clone)]
enum Keys {
    Text(Names),
    Packed(Vec<[u8; 16]>),
}

impl Default for Keys {
    fn default() -> Self {
        Self::Text(Names::default())
    }
}

/// Every bay of the city, numbered lot by lot, and the devices registered to them.
#[derive(Debug, Clone, Default)]
pub struct BayTable {
    /// `lot_starts[lot]` is the lot's first bay; the last entry is the number of bays.
    lot_starts: Vec<BayIdx>,
    names: Names,
    /// Per bay: its sensor's device number (`NONE` without).
    sensor: Vec<u32>,
    /// Cameras are fewer than bays: by bay.
    camera: HashMap<BayIdx, u32>,
    device_hash: Vec<u64>,
    device_keys: Keys,
    device_bay: Vec<BayIdx>,
    device_kind: Vec<BayDeviceKind>,
    /// Device numbers sorted by their id's hash, to find a device by id.
    by_hash: Vec<u32>,
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

    /// Closes the list of lots; devices are added after.
    pub fn finish_bays(&mut self) {
        let t = &mut self.table;
        t.lot_starts
            .push(u32::try_from(t.names.len()).unwrap_or(u32::MAX));
        t.sensor = vec![NONE; t.names.len()];
    }

    /// The number of a bay added already.
    pub fn find(&self, lot: u32, bay: &str) -> Option<BayIdx> {
        self.table.find(lot, bay)
    }

    /// Registers a device to a bay (after [`Self::finish_bays`]).
    pub fn device(&mut self, id: &str, secret: &str, bay: BayIdx, kind: BayDeviceKind) {
        let t = &mut self.table;
        let number = u32::try_from(t.device_hash.len()).unwrap_or(NONE);
        t.device_hash.push(hash(id));
        if let Keys::Text(names) = &mut t.device_keys {
            names.push(secret);
        }
        t.device_bay.push(bay);
        t.device_kind.push(kind);
        match kind {
            BayDeviceKind::Sensor => {
                if let Some(slot) = t.sensor.get_mut(bay as usize) {
                    *slot = number;
                }
            }
            BayDeviceKind::Camera => {
                t.camera.insert(bay, number);
            }
        }
    }

    pub fn build(mut self) -> BayTable {
        let t = &mut self.table;
        if t.sensor.len() != t.names.len() {
            // finish_bays was not called: close the lots now.
            t.lot_starts
                .push(u32::try_from(t.names.len()).unwrap_or(u32::MAX));
            t.sensor = vec![NONE; t.names.len()];
        }
        t.by_hash = (0..t.device_hash.len() as u32).collect();
        let hashes = &t.device_hash;
        t.by_hash.sort_unstable_by_key(|&d| hashes[d as usize]);
        if let Keys::Text(names) = &t.device_keys {
            let packed: Option<Vec<[u8; 16]>> = (0..names.len() as u32)
                .map(|d| pack(names.get(d)))
                .collect();
            if let Some(packed) = packed {
                t.device_keys = Keys::Packed(packed);
            }
        }
        t.names.shrink();
        if let Keys::Text(names) = &mut t.device_keys {
            names.shrink();
        }
        t.device_hash.shrink_to_fit();
        t.device_bay.shrink_to_fit();
        t.device_kind.shrink_to_fit();
        t.camera.shrink_to_fit();
        self.table
    }
}

/// The 16 bytes a key encodes, if it is exactly their URL-safe base64 without padding.
fn pack(secret: &str) -> Option<[u8; 16]> {
    let mut raw = [0u8; 16];
    let decoded = URL_SAFE_NO_PAD
        .decode_slice(secret.as_bytes(), &mut raw)
        .ok()?;
    (decoded == 16 && URL_SAFE_NO_PAD.encode(raw) == secret).then_some(raw)
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
        let d = number as usize;
        if d >= self.device_hash.len() {
            return None;
        }
        let key = match &self.device_keys {
            Keys::Text(names) => Key::Text(names.get(number)),
            Keys::Packed(raw) => Key::Packed(raw.get(d)?),
        };
        Some(BayDevice {
            key,
            bay: *self.device_bay.get(d)?,
            kind: *self.device_kind.get(d)?,
            id_hash: *self.device_hash.get(d)?,
        })
    }

    /// The sensor registered to a bay.
    pub fn sensor(&self, bay: BayIdx) -> Option<BayDevice<'_>> {
        self.device(*self.sensor.get(bay as usize)?)
    }

    /// The camera registered to a bay.
    pub fn camera(&self, bay: BayIdx) -> Option<BayDevice<'_>> {
        self.device(*self.camera.get(&bay)?)
    }

    /// A bay device by its id.
    pub fn device_by_id(&self, id: &str) -> Option<BayDevice<'_>> {
        let h = hash(id);
        let at = self
            .by_hash
            .partition_point(|&d| self.device_hash[d as usize] < h);
        let number = *self.by_hash.get(at)?;
        (self.device_hash[number as usize] == h)
            .then(|| self.device(number))
            .flatten()
    }

    /// Bytes held on the heap (for the memory figures).
    pub fn heap_bytes(&self) -> usize {
        let keys = match &self.device_keys {
            Keys::Text(names) => names.heap_bytes(),
            Keys::Packed(raw) => raw.capacity() * 16,
        };
        self.names.heap_bytes()
            + keys
            + (self.sensor.capacity() + self.device_bay.capacity() + self.by_hash.capacity()) * 4
            + self.device_hash.capacity() * 8
            + self.device_kind.capacity()
            + self.camera.capacity() * 9
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
        assert!(sensor.is("s-1") && !sensor.is("s-x"));
        assert_eq!(sensor.key.bytes().as_ref(), b"secret-1");
        assert!(table.camera(0).unwrap().is("c-1"));
        assert!(table.sensor(1).is_none());
        assert!(table.camera(3).is_none());
        assert_eq!(table.device_by_id("s-x").unwrap().bay, 3);
        assert_eq!(
            table.device_by_id("c-1").unwrap().kind,
            BayDeviceKind::Camera
        );
        assert!(table.device_by_id("s-2").is_none());
    }

    #[test]
    fn keys_issued_as_sixteen_random_bytes_are_packed_and_sign_the_same() {
        let key = URL_SAFE_NO_PAD.encode([7u8; 16]);
        let mut builder = BayTableBuilder::default();
        builder.lot(vec!["a".into(), "b".into()]);
        builder.finish_bays();
        builder.device("s-a", &key, 0, BayDeviceKind::Sensor);
        builder.device(
            "s-b",
            &URL_SAFE_NO_PAD.encode([9u8; 16]),
            1,
            BayDeviceKind::Sensor,
        );
        let packed = builder.build();
        let sensor = packed.sensor(0).unwrap();
        assert!(matches!(sensor.key, Key::Packed(_)));
        assert_eq!(sensor.key.bytes().as_ref(), key.as_bytes());
        // One key that does not pack keeps every key as text.
        assert!(matches!(table().sensor(0).unwrap().key, Key::Text(_)));
        assert_eq!(pack("not-sixteen-bytes"), None);
    }
}
