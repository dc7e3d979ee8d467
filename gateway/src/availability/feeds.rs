//! The public availability feeds of SPEC §5, rendered from a snapshot of lots.
//!
//! - [`fiware`]: an NGSI-LD key-values array of `OffStreetParking` / `OnStreetParking` entities
//!   (FIWARE Smart Data Models, `dataModel.Parking`), each valid against its published schema.
//! - [`datex2`]: a DATEX II version 3 parking status publication (`prk:ParkingStatusPublication`)
//!   with one `prk:ParkingSiteStatus` per lot.
//!
//! Both are pure functions: the caller passes the lots and the clock reading. Counts only, never a
//! plate. Bays of unknown state are never reported as available: `availableSpotNumber` and
//! `parkingNumberOfVacantSpaces` are the free bays, and the DATEX occupancy percentage is taken
//! over the bays whose state is known. A closed lot keeps its measured counts; its closure is
//! carried by `status` in FIWARE (off-street only: `OnStreetParking` defines no status) and by
//! `parkingSiteOpeningStatus` in DATEX.

use std::io::{self, Write};

use chrono::{DateTime, SecondsFormat, Utc};
use parkflow_protocol::LotStatus;
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};
use serde_json::{Map, Value, json};

/// JSON-LD contexts named by every entity: the Smart Data Models parking terms, then the NGSI-LD
/// core context. Serve the feed as `application/ld+json` so that clients read them.
const NGSI_LD_CONTEXT: [&str; 2] = [
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Parking/master/context.jsonld",
    "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld",
];

const DATEX_PAYLOAD_NS: &str = "http://datex2.eu/schema/3/d2Payload";
const DATEX_COMMON_NS: &str = "http://datex2.eu/schema/3/common";
const DATEX_PARKING_NS: &str = "http://datex2.eu/schema/3/parking";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// Language of the publication and of the lot names in it.
const DATEX_LANG: &str = "zh";
const DATEX_COUNTRY: &str = "CN";
const DATEX_NATIONAL_IDENTIFIER: &str = "parkflow";
/// Version of the parking records the statuses refer to. ParkFlow publishes no DATEX parking
/// table yet, so every lot is record version 1.
const DATEX_RECORD_VERSION: &str = "1";

/// One lot as the feeds show it (counts only: never a plate).
#[derive(Debug, Clone)]
pub(crate) struct FeedLot<'a> {
    /// Lot id, `[a-z0-9][a-z0-9-]{0,63}`.
    pub id: &'a str,
    /// Display name; any text (it is escaped where needed).
    pub name: &'a str,
    /// `OnStreetParking` when true, `OffStreetParking` otherwise.
    pub on_street: bool,
    /// WGS84 latitude in degrees.
    pub lat: f64,
    /// WGS84 longitude in degrees.
    pub lon: f64,
    /// Bays in the lot: `free + occupied + unknown`.
    pub total: u32,
    /// Bays known to be free.
    pub free: u32,
    /// Bays known to be occupied.
    pub occupied: u32,
    /// One of `spacesAvailable`, `almostFull`, `full`, `closed`.
    pub status: LotStatus,
    /// When these counts were observed.
    pub observed_at: DateTime<Utc>,
}

/// The FIWARE feed: an NGSI-LD key-values array with one entity per lot.
pub(crate) fn fiware(lots: &[FeedLot<'_>]) -> Value {
    Value::Array(lots.iter().map(fiware_entity).collect())
}

fn fiware_entity(lot: &FeedLot<'_>) -> Value {
    let kind = if lot.on_street {
        "OnStreetParking"
    } else {
        "OffStreetParking"
    };
    let observed = timestamp(lot.observed_at);
    let mut entity = Map::new();
    let mut set = |key: &str, value: Value| entity.insert(key.to_owned(), value);
    set("id", json!(format!("urn:ngsi-ld:{kind}:{}", lot.id)));
    set("type", json!(kind));
    set("name", json!(lot.name));
    set(
        "location",
        json!({ "type": "Point", "coordinates": [lot.lon, lot.lat] }),
    );
    // An off-street total must be at least one bay; a lot without bays states no total.
    if lot.total > 0 {
        set("totalSpotNumber", json!(lot.total));
    }
    set("availableSpotNumber", json!(lot.free));
    set("occupiedSpotNumber", json!(lot.occupied));
    if lot.on_street {
        // Every on-street bay has its own occupancy sensor (SPEC §1).
        set("occupancyDetectionType", json!(["singleSpaceDetection"]));
    } else {
        // Off-street lots are gated, a barrier per lane (SPEC §1). Only OffStreetParking defines
        // `status`, whose values are ours (`LotStatus` is FIWARE's enum).
        set("category", json!(["barrierAccess"]));
        set("status", json!([lot.status]));
    }
    set("dateModified", json!(observed));
    set("observationDateTime", json!(observed));
    set("@context", json!(NGSI_LD_CONTEXT));
    Value::Object(entity)
}

/// The DATEX II v3 feed: a parking status publication with one site status per lot.
/// Writing into memory does not fail in practice; the error is passed on rather than assumed away.
pub(crate) fn datex2(lots: &[FeedLot<'_>], publication_time: DateTime<Utc>) -> io::Result<String> {
    let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
    write_publication(&mut writer, lots, publication_time)?;
    // Every piece written is a &str or escaped from one, so the bytes are UTF-8.
    Ok(String::from_utf8_lossy(&writer.into_inner()).into_owned())
}

fn write_publication<W: Write>(
    w: &mut Writer<W>,
    lots: &[FeedLot<'_>],
    publication_time: DateTime<Utc>,
) -> io::Result<()> {
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.create_element("d2:payload")
        .with_attributes([
            ("xmlns:d2", DATEX_PAYLOAD_NS),
            ("xmlns:com", DATEX_COMMON_NS),
            ("xmlns:prk", DATEX_PARKING_NS),
            ("xmlns:xsi", XSI_NS),
            ("xsi:type", "prk:ParkingStatusPublication"),
            ("lang", DATEX_LANG),
            ("modelBaseVersion", "3"),
        ])
        .write_inner_content(|w| {
            text_element(w, "com:publicationTime", &timestamp(publication_time))?;
            w.create_element("com:publicationCreator")
                .write_inner_content(|w| {
                    text_element(w, "com:country", DATEX_COUNTRY)?;
                    text_element(w, "com:nationalIdentifier", DATEX_NATIONAL_IDENTIFIER)
                })?;
            lots.iter().try_for_each(|lot| write_site_status(w, lot))
        })?;
    Ok(())
}

/// One `prk:parkingRecordStatus`, its children in the order of the schema's sequence:
/// reference, origin time, description, occupancy, then the site's own statuses.
fn write_site_status<W: Write>(w: &mut Writer<W>, lot: &FeedLot<'_>) -> io::Result<()> {
    let (site_status, opening_status) = datex_status(lot.status);
    w.create_element("prk:parkingRecordStatus")
        .with_attribute(("xsi:type", "prk:ParkingSiteStatus"))
        .write_inner_content(|w| {
            w.create_element("prk:parkingRecordReference")
                .with_attributes([
                    ("targetClass", "prk:ParkingRecord"),
                    ("id", lot.id),
                    ("version", DATEX_RECORD_VERSION),
                ])
                .write_empty()?;
            text_element(
                w,
                "prk:parkingStatusOriginTime",
                &timestamp(lot.observed_at),
            )?;
            // The status publication has no name field; the name travels as the status description
            // so a consumer without a parking table can still label the lot.
            w.create_element("prk:parkingStatusDescription")
                .write_inner_content(|w| {
                    w.create_element("com:values").write_inner_content(|w| {
                        w.create_element("com:value")
                            .with_attribute(("lang", DATEX_LANG))
                            .write_text_content(BytesText::new(lot.name))?;
                        Ok(())
                    })?;
                    Ok(())
                })?;
            w.create_element("prk:parkingOccupancy")
                .write_inner_content(|w| {
                    text_element(w, "prk:parkingNumberOfVacantSpaces", &lot.free.to_string())?;
                    text_element(
                        w,
                        "prk:parkingNumberOfOccupiedSpaces",
                        &lot.occupied.to_string(),
                    )?;
                    if let Some(percent) = occupancy_percent(lot) {
                        text_element(w, "prk:parkingOccupancy", &format!("{percent:.1}"))?;
                    }
                    Ok(())
                })?;
            if let Some(status) = site_status {
                text_element(w, "prk:parkingSiteStatus", status)?;
            }
            if let Some(status) = opening_status {
                text_element(w, "prk:parkingSiteOpeningStatus", status)?;
            }
            Ok(())
        })?;
    Ok(())
}

fn text_element<W: Write>(w: &mut Writer<W>, name: &str, text: &str) -> io::Result<()> {
    w.create_element(name)
        .write_text_content(BytesText::new(text))?;
    Ok(())
}

/// Occupied share of the bays whose state is known, in percent; none when no bay is known.
fn occupancy_percent(lot: &FeedLot<'_>) -> Option<f64> {
    let known = lot.free + lot.occupied;
    (known > 0).then(|| f64::from(lot.occupied) * 100.0 / f64::from(known))
}

/// DATEX II `parkingSiteStatus` and `parkingSiteOpeningStatus` for a FIWARE status. The DATEX
/// site status has no "closed": a closed lot says so through its opening status alone.
fn datex_status(status: LotStatus) -> (Option<&'static str>, Option<&'static str>) {
    match status {
        LotStatus::SpacesAvailable => (Some("spacesAvailable"), Some("open")),
        LotStatus::AlmostFull => (Some("almostFull"), Some("open")),
        LotStatus::Full => (Some("full"), Some("open")),
        LotStatus::Closed => (None, Some("closed")),
    }
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use quick_xml::escape::resolve_predefined_entity;
    use quick_xml::events::BytesStart;
    use quick_xml::name::ResolveResult;
    use quick_xml::{NsReader, XmlVersion};

    const FIXTURE_COMMON: &str = include_str!("../../tests/fixtures/fiware/common-schema.json");
    const FIXTURE_OFF: &str =
        include_str!("../../tests/fixtures/fiware/OffStreetParking.schema.json");
    const FIXTURE_ON: &str =
        include_str!("../../tests/fixtures/fiware/OnStreetParking.schema.json");
    const COMMON_URL: &str = "https://smart-data-models.github.io/data-models/common-schema.json";
    const AWKWARD_NAME: &str = "东方<广场> & \"Q's\" 停车场";
    const RECORD_ORDER: [&str; 4] = [
        "parkingRecordReference",
        "parkingStatusOriginTime",
        "parkingStatusDescription",
        "parkingOccupancy",
    ];

    fn observed() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 8, 30, 0)
            .single()
            .expect("a valid instant")
    }

    fn lot(
        id: &'static str,
        on_street: bool,
        counts: [u32; 3],
        status: LotStatus,
    ) -> FeedLot<'static> {
        let [free, occupied, unknown] = counts;
        let total = free + occupied + unknown;
        let (name, lat, lon, observed_at) = ("人民广场停车场", 31.2304, 121.4737, observed());
        FeedLot {
            id,
            name,
            on_street,
            lat,
            lon,
            total,
            free,
            occupied,
            status,
            observed_at,
        }
    }

    /// Off- and on-street lots: one full, one with unknown bays and an awkward name, two closed
    /// (one of them without bays).
    fn sample_lots() -> Vec<FeedLot<'static>> {
        let street = lot("street-7", true, [3, 9, 4], LotStatus::AlmostFull);
        vec![
            lot("garage-a", false, [40, 60, 0], LotStatus::SpacesAvailable),
            lot("garage-full", false, [0, 120, 0], LotStatus::Full),
            FeedLot {
                name: AWKWARD_NAME,
                ..street
            },
            lot("street-closed", true, [0, 0, 12], LotStatus::Closed),
            lot("garage-empty", false, [0, 0, 0], LotStatus::Closed),
        ]
    }

    /// Validates against the on- or off-street schema; the common definitions come from the
    /// local stand-in, never from the network, and formats (date-time, uri) are asserted.
    fn check(on_street: bool, entity: &Value) -> Result<(), Vec<String>> {
        let parse = |text: &str| serde_json::from_str::<Value>(text).expect("fixture is json");
        let registry = jsonschema::Registry::new().add(COMMON_URL, parse(FIXTURE_COMMON));
        let registry = registry
            .and_then(|r| r.prepare())
            .expect("the stand-in registers");
        let schema = parse(if on_street { FIXTURE_ON } else { FIXTURE_OFF });
        let validator = jsonschema::options()
            .with_registry(&registry)
            .offline()
            .should_validate_formats(true)
            .build(&schema)
            .expect("the shipped schema compiles");
        let errors = validator
            .iter_errors(entity)
            .map(|e| format!("{e} at {}", e.instance_path()));
        let errors: Vec<String> = errors.collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    #[test]
    fn every_fiware_entity_is_valid_against_its_schema() {
        let lots = sample_lots();
        let feed = fiware(&lots);
        assert_eq!(feed.as_array().map(Vec::len), Some(lots.len()));
        for (entity, lot) in feed.as_array().into_iter().flatten().zip(&lots) {
            assert_eq!(check(lot.on_street, entity), Ok(()), "{entity:#}");
        }
        assert_eq!(feed[0]["id"], "urn:ngsi-ld:OffStreetParking:garage-a");
        assert_eq!(feed[0]["status"], json!(["spacesAvailable"]));
        assert_eq!(feed[0]["category"], json!(["barrierAccess"]));
        assert_eq!(feed[0]["dateModified"], "2025-03-01T08:30:00Z");
        assert_eq!(
            feed[4].get("totalSpotNumber"),
            None,
            "an off-street total is at least 1"
        );
    }

    #[test]
    fn unknown_bays_are_not_counted_as_available() {
        let street = &fiware(&sample_lots())[2];
        assert_eq!(street["id"], "urn:ngsi-ld:OnStreetParking:street-7");
        assert_eq!(street["name"], AWKWARD_NAME);
        assert_eq!(
            street["location"]["coordinates"],
            json!([121.4737, 31.2304])
        );
        assert_eq!(street["totalSpotNumber"], 16);
        assert_eq!(street["availableSpotNumber"], 3);
        assert_eq!(street["occupiedSpotNumber"], 9);
        assert_eq!(
            street.get("status"),
            None,
            "OnStreetParking defines no status"
        );
    }

    #[test]
    fn entities_that_break_the_schema_fail_validation() {
        let valid = fiware(&sample_lots())[0].clone();
        assert_eq!(check(false, &valid), Ok(()));
        let breaks = [
            ("availableSpotNumber", json!(-1)),
            ("status", json!(["nearlyFull"])),
            ("status", json!("full")),
            ("dateModified", json!("yesterday")),
            (
                "location",
                json!({ "type": "Point", "coordinates": [31.2304, 121.4737] }),
            ),
            ("type", json!("ParkingSpot")),
            ("location", Value::Null),
        ];
        for (key, value) in breaks {
            let mut entity = valid.clone();
            let object = entity.as_object_mut().expect("an entity is an object");
            match value {
                Value::Null => object.remove(key),
                value => object.insert(key.into(), value),
            };
            assert!(
                check(false, &entity).is_err(),
                "passed validation: {entity}"
            );
        }
    }

    /// An element as parsed: namespace, local name, attributes by qualified name, text, children.
    #[derive(Debug, Default)]
    struct Node {
        ns: String,
        name: String,
        attrs: Vec<(String, String)>,
        text: String,
        children: Vec<Node>,
    }

    impl Node {
        fn all(&self, name: &str) -> Vec<&Node> {
            self.children.iter().filter(|c| c.name == name).collect()
        }
        fn child(&self, name: &str) -> &Node {
            let found = self.children.iter().find(|c| c.name == name);
            found.unwrap_or_else(|| panic!("no <{name}> in <{}>", self.name))
        }
        fn text_of(&self, name: &str) -> Option<&str> {
            self.children
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.text.as_str())
        }
        fn attr(&self, key: &str) -> &str {
            let found = self
                .attrs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str());
            found.unwrap_or_else(|| panic!("no {key} on <{}>", self.name))
        }
    }

    fn open(ns: String, start: &BytesStart<'_>) -> Node {
        let attrs = start.attributes().map(|attr| {
            let attr = attr.expect("a well-formed attribute");
            let value = attr
                .normalized_value(XmlVersion::Implicit1_0)
                .expect("a valid value");
            (attr.key.as_ref().to_owned(), value.into_owned())
        });
        let name = start.local_name().as_ref().to_owned();
        Node {
            ns,
            name,
            attrs: attrs.collect(),
            ..Node::default()
        }
    }

    /// Parses with namespaces resolved and end names checked; panics on anything malformed.
    fn parse_xml(xml: &str) -> Node {
        let mut reader = NsReader::from_str(xml);
        let mut stack = vec![Node::default()];
        loop {
            let (ns, event) = reader.read_resolved_event().expect("well-formed xml");
            let ns = match ns {
                ResolveResult::Bound(ns) => ns.as_ref().to_owned(),
                ResolveResult::Unbound => String::new(),
                ResolveResult::Unknown(prefix) => panic!("undeclared prefix {prefix}"),
            };
            let top = stack.last_mut().expect("the document node stays");
            match event {
                Event::Start(start) => stack.push(open(ns, &start)),
                Event::Empty(start) => top.children.push(open(ns, &start)),
                Event::Text(text) => top.text.push_str(&text.xml10_content()),
                Event::GeneralRef(r) => match r.resolve_char_ref().expect("a valid reference") {
                    Some(c) => top.text.push(c),
                    None => top.text.push_str(
                        resolve_predefined_entity(&r.xml10_content()).expect("a known entity"),
                    ),
                },
                Event::End(_) => {
                    let done = stack.pop().expect("an open element");
                    stack.last_mut().expect("a parent").children.push(done);
                }
                Event::Eof => break,
                _ => {}
            }
        }
        let document = stack
            .pop()
            .filter(|_| stack.is_empty())
            .expect("every element closed");
        let [root]: [Node; 1] = document
            .children
            .try_into()
            .expect("exactly one root element");
        root
    }

    #[test]
    fn datex2_is_a_parking_status_publication_with_one_site_status_per_lot() {
        let published = observed() + chrono::Duration::seconds(5);
        let root = parse_xml(&datex2(&sample_lots(), published).unwrap());
        assert_eq!(
            (root.ns.as_str(), root.name.as_str()),
            (DATEX_PAYLOAD_NS, "payload")
        );
        assert_eq!(root.attr("xsi:type"), "prk:ParkingStatusPublication");
        assert_eq!(root.attr("xmlns:prk"), DATEX_PARKING_NS);
        assert_eq!(root.attr("lang"), "zh");
        assert_eq!(root.attr("modelBaseVersion"), "3");
        assert_eq!(root.child("publicationTime").ns, DATEX_COMMON_NS);
        assert_eq!(
            root.text_of("publicationTime"),
            Some("2025-03-01T08:30:05Z")
        );
        let creator = root.child("publicationCreator");
        assert_eq!(creator.text_of("country"), Some("CN"));
        assert_eq!(creator.text_of("nationalIdentifier"), Some("parkflow"));

        // Vacant, occupied, percentage of the known bays, site status, opening status.
        let open = Some("open");
        let expected = [
            ("40", "60", Some("60.0"), Some("spacesAvailable"), open),
            ("0", "120", Some("100.0"), Some("full"), open),
            ("3", "9", Some("75.0"), Some("almostFull"), open),
            ("0", "0", None, None, Some("closed")),
            ("0", "0", None, None, Some("closed")),
        ];
        let records = root.all("parkingRecordStatus");
        assert_eq!(records.len(), expected.len(), "one record per lot");
        for ((record, lot), want) in records.into_iter().zip(sample_lots()).zip(expected) {
            assert_eq!(record.ns, DATEX_PARKING_NS);
            assert_eq!(record.attr("xsi:type"), "prk:ParkingSiteStatus");
            let reference = record.child("parkingRecordReference");
            assert_eq!(reference.attr("id"), lot.id);
            assert_eq!(reference.attr("version"), "1");
            assert_eq!(reference.attr("targetClass"), "prk:ParkingRecord");
            assert_eq!(
                record.text_of("parkingStatusOriginTime"),
                Some("2025-03-01T08:30:00Z")
            );
            let occupancy = record.child("parkingOccupancy");
            let got = (
                occupancy
                    .text_of("parkingNumberOfVacantSpaces")
                    .unwrap_or_default(),
                occupancy
                    .text_of("parkingNumberOfOccupiedSpaces")
                    .unwrap_or_default(),
                occupancy.text_of("parkingOccupancy"),
                record.text_of("parkingSiteStatus"),
                record.text_of("parkingSiteOpeningStatus"),
            );
            assert_eq!(got, want, "lot {}", lot.id);
            let order: Vec<&str> = record
                .children
                .iter()
                .take(4)
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(order, RECORD_ORDER, "the schema's sequence");
        }
    }

    #[test]
    fn datex2_lot_names_with_markup_characters_round_trip() {
        let xml = datex2(&sample_lots(), observed()).unwrap();
        assert!(!xml.contains(AWKWARD_NAME), "the raw name must be escaped");
        let root = parse_xml(&xml);
        let description = root.all("parkingRecordStatus")[2].child("parkingStatusDescription");
        let name = description.child("values").child("value");
        assert_eq!(name.ns, DATEX_COMMON_NS);
        assert_eq!(name.attr("lang"), "zh");
        assert_eq!(name.text, AWKWARD_NAME);
    }

    #[test]
    fn datex2_without_lots_is_still_a_publication() {
        let root = parse_xml(&datex2(&[], observed()).unwrap());
        assert_eq!(root.name, "payload");
        assert!(root.all("parkingRecordStatus").is_empty());
    }
}
