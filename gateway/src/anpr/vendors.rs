//! Each vendor's own plate event, read into what the gate pipeline needs. Pure functions over the
//! body (no I/O); the samples they are tested on, written from each vendor's documentation, are in
//! `tests/fixtures/anpr/` with the document they follow named beside them.

use chrono::{DateTime, Utc};
use parkflow_protocol::PlateColor;
use serde::Deserialize;

use super::Vendor;

/// A plate event, read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VendorRead {
    /// The vendor's id of the event: the same again when the vendor repeats or corrects it.
    pub event_id: String,
    pub plate: String,
    pub plate_color: Option<PlateColor>,
    /// 0 to 1.
    pub confidence: f64,
    /// When the camera saw it, if the event says.
    pub observed_at: Option<DateTime<Utc>>,
    /// Which way the car went, where the vendor says it in terms of a lane (Axis `in`/`out`).
    pub direction: Option<parkflow_protocol::Direction>,
}

/// Why a body is not an event of its vendor.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("not {0}")]
    Format(&'static str),
    #[error("{0}")]
    Field(&'static str),
}

/// Reads `body` as `vendor`'s event (`content_type` says whether it is inside multipart form
/// data, as Hikvision sends it with pictures).
pub(crate) fn parse(
    vendor: Vendor,
    content_type: &str,
    body: &[u8],
) -> Result<VendorRead, ParseError> {
    let body = if content_type.starts_with("multipart/form-data") {
        event_part(content_type, body).ok_or(ParseError::Format("multipart with an event part"))?
    } else {
        body.to_vec()
    };
    match vendor {
        Vendor::Hikvision => hikvision(&body),
        Vendor::Platerecognizer => plate_recognizer(&body),
        Vendor::Openalpr => openalpr(&body),
        Vendor::Dahua => dahua(&body),
        Vendor::Axis => axis(&body),
    }
}

/// The read's event id: the vendor's, prefixed with the vendor and the camera (a camera that
/// replaces another on the gate counts its own ids), in the characters event ids take; one too
/// long for an event id is shortened to a digest of it, never cut (two ids must not become one).
pub(crate) fn event_id(vendor: Vendor, device: &str, id: &str) -> String {
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let full = format!("{}:{device}:{clean}", vendor.as_str());
    if full.len() <= 128 {
        return full;
    }
    use sha2::Digest as _;
    let digest: String = sha2::Sha256::digest(full.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}:{digest}", vendor.as_str())
}

/// The event's part of a multipart body: the first part that is XML or JSON.
fn event_part(content_type: &str, body: &[u8]) -> Option<Vec<u8>> {
    form_parts(content_type, body)?.find_map(|(head, content)| {
        (head.contains("xml") || head.contains("json")).then(|| content.to_vec())
    })
}

/// At most this many pictures are taken from one event.
pub(crate) const MAX_PICTURES: usize = 4;

/// A picture that came with an event (a part of multipart form data that is an image).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Picture {
    /// `image/jpeg`, `image/png`, `image/gif`, `image/webp` or `image/bmp`; anything else is not
    /// taken.
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

/// The pictures of a multipart event (its image parts, as Hikvision and Plate Recognizer send
/// them), at most [`MAX_PICTURES`]. Pictures inside the event's JSON as base64 are not taken.
pub(crate) fn pictures(content_type: &str, body: &[u8]) -> Vec<Picture> {
    if !content_type.starts_with("multipart/form-data") {
        return Vec::new();
    }
    let Some(parts) = form_parts(content_type, body) else {
        return Vec::new();
    };
    parts
        .filter_map(|(head, content)| {
            let content_type = [
                "image/jpeg",
                "image/png",
                "image/gif",
                "image/webp",
                "image/bmp",
            ]
            .into_iter()
            .find(|t| head.contains(t))
            // Hikvision labels its JPEGs with Internet Explorer's `image/pjpeg`.
            .or_else(|| head.contains("image/pjpeg").then_some("image/jpeg"))?;
            (!content.is_empty()).then(|| Picture {
                content_type,
                bytes: content.to_vec(),
            })
        })
        .take(MAX_PICTURES)
        .collect()
}

/// The parts of a multipart body: each one's head (lowercase) and content.
fn form_parts<'a>(
    content_type: &str,
    body: &'a [u8],
) -> Option<impl Iterator<Item = (String, &'a [u8])> + 'a> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("--{boundary}").into_bytes();
    let parts: Vec<&'a [u8]> = split(body, &delimiter).collect();
    Some(parts.into_iter().filter_map(|part| {
        let split_at = find(part, b"\r\n\r\n")?;
        let (head, content) = (&part[..split_at], &part[split_at + 4..]);
        let head = String::from_utf8_lossy(head).to_ascii_lowercase();
        Some((head, content.strip_suffix(b"\r\n").unwrap_or(content)))
    }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn split<'a>(body: &'a [u8], delimiter: &[u8]) -> impl Iterator<Item = &'a [u8]> {
    let mut rest = body;
    std::iter::from_fn(move || {
        let start = find(rest, delimiter)? + delimiter.len();
        let after = &rest[start..];
        let end = find(after, delimiter).unwrap_or(after.len());
        rest = &after[end..];
        (end > 0 && !after.starts_with(b"--")).then(|| &after[..end])
    })
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8], what: &'static str) -> Result<T, ParseError> {
    serde_json::from_slice(body).map_err(|_| ParseError::Format(what))
}

/// An event id that is a camera's counter, with the day the event was seen: a counter a restart
/// begins again cannot make a new car's event the repeat of an old one. (A re-sent event keeps
/// its time, so its id; one re-sent across midnight is a new read, which the gate's same-plate
/// rule treats as the repeat it is.)
fn counted(id: impl std::fmt::Display, observed_at: Option<DateTime<Utc>>) -> String {
    match observed_at {
        Some(at) => format!("{id}-{}", at.format("%Y%m%d")),
        None => id.to_string(),
    }
}

/// 0–100 to 0–1.
fn percent(value: f64) -> f64 {
    (value / 100.0).clamp(0.0, 1.0)
}

fn rfc3339(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn hikvision(body: &[u8]) -> Result<VendorRead, ParseError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Alert {
        #[serde(rename = "channelID")]
        channel_id: Option<String>,
        date_time: Option<String>,
        active_post_count: Option<String>,
        event_type: String,
        #[serde(rename = "UUID")]
        uuid: Option<String>,
        #[serde(rename = "ANPR")]
        anpr: Option<Anpr>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Anpr {
        license_plate: String,
        confidence_level: Option<f64>,
        plate_color: Option<String>,
    }
    let text = std::str::from_utf8(body).map_err(|_| ParseError::Format("UTF-8 XML"))?;
    let alert: Alert = quick_xml::de::from_str(text)
        .map_err(|_| ParseError::Format("a Hikvision EventNotificationAlert"))?;
    if !alert.event_type.eq_ignore_ascii_case("ANPR") {
        return Err(ParseError::Field("eventType is not ANPR"));
    }
    let anpr = alert.anpr.ok_or(ParseError::Field("no ANPR element"))?;
    let event_id = alert
        .uuid
        .or_else(|| {
            Some(format!(
                "{}-{}-{}",
                alert.channel_id.as_deref().unwrap_or("1"),
                alert.date_time.as_deref()?,
                alert.active_post_count.as_deref().unwrap_or("0")
            ))
        })
        .ok_or(ParseError::Field("neither UUID nor dateTime"))?;
    Ok(VendorRead {
        event_id,
        plate: anpr.license_plate,
        plate_color: anpr.plate_color.as_deref().and_then(PlateColor::parse),
        confidence: anpr.confidence_level.map_or(1.0, percent),
        observed_at: alert.date_time.as_deref().and_then(rfc3339),
        direction: None,
    })
}

fn plate_recognizer(body: &[u8]) -> Result<VendorRead, ParseError> {
    #[derive(Deserialize)]
    struct Hook {
        data: Data,
    }
    #[derive(Deserialize)]
    struct Data {
        camera_id: Option<String>,
        filename: Option<String>,
        timestamp: Option<String>,
        results: Vec<Result>,
    }
    #[derive(Deserialize)]
    struct Result {
        plate: String,
        score: f64,
    }
    let hook: Hook = json(body, "a Plate Recognizer webhook")?;
    let best = hook
        .data
        .results
        .iter()
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .ok_or(ParseError::Field("no results"))?;
    let event_id = hook
        .data
        .filename
        .clone()
        .or_else(|| {
            Some(format!(
                "{}-{}",
                hook.data.camera_id.as_deref().unwrap_or("camera"),
                hook.data.timestamp.as_deref()?
            ))
        })
        .ok_or(ParseError::Field("neither filename nor timestamp"))?;
    Ok(VendorRead {
        event_id,
        plate: best.plate.to_uppercase(),
        plate_color: None,
        confidence: best.score.clamp(0.0, 1.0),
        observed_at: hook.data.timestamp.as_deref().and_then(rfc3339),
        direction: None,
    })
}

fn openalpr(body: &[u8]) -> Result<VendorRead, ParseError> {
    #[derive(Deserialize)]
    struct Group {
        data_type: String,
        best_plate_number: Option<String>,
        best_confidence: Option<f64>,
        best_uuid: Option<String>,
        epoch_start: Option<i64>,
        results: Option<Vec<Plate>>,
        uuid: Option<String>,
        epoch_time: Option<i64>,
    }
    #[derive(Deserialize)]
    struct Plate {
        plate: String,
        confidence: f64,
    }
    let group: Group = json(body, "an OpenALPR alpr_group or alpr_results")?;
    let millis = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms);
    match group.data_type.as_str() {
        "alpr_group" => Ok(VendorRead {
            event_id: group.best_uuid.ok_or(ParseError::Field("no best_uuid"))?,
            plate: group
                .best_plate_number
                .ok_or(ParseError::Field("no best_plate_number"))?,
            plate_color: None,
            confidence: group.best_confidence.map_or(1.0, percent),
            observed_at: group.epoch_start.and_then(millis),
            direction: None,
        }),
        "alpr_results" => {
            let best = group
                .results
                .as_ref()
                .and_then(|r| {
                    r.iter()
                        .max_by(|a, b| a.confidence.total_cmp(&b.confidence))
                })
                .ok_or(ParseError::Field("no results"))?;
            Ok(VendorRead {
                event_id: group.uuid.clone().ok_or(ParseError::Field("no uuid"))?,
                plate: best.plate.clone(),
                plate_color: None,
                confidence: percent(best.confidence),
                observed_at: group.epoch_time.and_then(millis),
                direction: None,
            })
        }
        _ => Err(ParseError::Field(
            "data_type is neither alpr_group nor alpr_results",
        )),
    }
}

fn dahua(body: &[u8]) -> Result<VendorRead, ParseError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Event {
        code: Option<String>,
        #[serde(rename = "GroupID")]
        group_id: Option<u64>,
        #[serde(rename = "EventID")]
        event_id: Option<u64>,
        /// True UTC, seconds (`UTC` is the camera's wall clock in some firmware).
        #[serde(rename = "RealUTC")]
        real_utc: Option<i64>,
        #[serde(rename = "UTCMS")]
        utc_ms: Option<i64>,
        object: Option<Object>,
        traffic_car: Option<TrafficCar>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Object {
        /// 0 to 255.
        confidence: Option<f64>,
        text: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct TrafficCar {
        plate_number: Option<String>,
        plate_color: Option<String>,
    }
    let event: Event = json(body, "a Dahua traffic event")?;
    if event
        .code
        .as_deref()
        .is_some_and(|c| c != "TrafficJunction")
    {
        return Err(ParseError::Field("Code is not TrafficJunction"));
    }
    let plate = event
        .traffic_car
        .as_ref()
        .and_then(|c| c.plate_number.clone())
        .or_else(|| event.object.as_ref().and_then(|o| o.text.clone()))
        .ok_or(ParseError::Field("no PlateNumber"))?;
    let event_id = event
        .group_id
        .or(event.event_id)
        .ok_or(ParseError::Field("neither GroupID nor EventID"))?;
    let observed_at = event.real_utc.and_then(|secs| {
        let millis = secs
            .checked_mul(1000)?
            .checked_add(event.utc_ms.unwrap_or(0))?;
        DateTime::<Utc>::from_timestamp_millis(millis)
    });
    Ok(VendorRead {
        // A group id is the camera's counter, which a restart may begin again: the day it was
        // seen keeps an old read's decision from answering a new car.
        event_id: counted(event_id, observed_at),
        plate,
        plate_color: event
            .traffic_car
            .and_then(|c| c.plate_color)
            .and_then(|c| PlateColor::parse(&c.to_ascii_lowercase())),
        confidence: event
            .object
            .and_then(|o| o.confidence)
            .map_or(1.0, |c| (c / 255.0).clamp(0.0, 1.0)),
        observed_at,
        direction: None,
    })
}

fn axis(body: &[u8]) -> Result<VendorRead, ParseError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Event {
        plate_text: Option<String>,
        #[serde(rename = "plateUTF8")]
        plate_utf8: Option<String>,
        /// 0 to 1, as text.
        plate_confidence: Option<String>,
        /// The same car's events (`carState` new, update, lost) share it.
        #[serde(rename = "carID")]
        car_id: Option<String>,
        /// Milliseconds since the epoch, as text.
        #[serde(rename = "capture_timestamp")]
        capture_timestamp: Option<String>,
        #[serde(rename = "camera_info")]
        camera_info: Option<CameraInfo>,
        /// `in` or `out`.
        car_move_direction: Option<String>,
    }
    #[derive(Deserialize)]
    struct CameraInfo {
        #[serde(rename = "SerialNumber")]
        serial_number: Option<String>,
    }
    let event: Event = json(body, "an Axis License Plate Verifier event")?;
    let plate = event
        .plate_utf8
        .or(event.plate_text)
        .ok_or(ParseError::Field("no plateText"))?;
    let car = event.car_id.ok_or(ParseError::Field("no carID"))?;
    let serial = event
        .camera_info
        .and_then(|c| c.serial_number)
        .unwrap_or_default();
    let observed_at = event
        .capture_timestamp
        .as_deref()
        .and_then(|t| t.parse::<i64>().ok())
        .and_then(DateTime::<Utc>::from_timestamp_millis);
    Ok(VendorRead {
        // The car id is the camera's counter (see [`counted`]).
        event_id: counted(format!("{serial}-{car}"), observed_at),
        plate,
        plate_color: None,
        confidence: event
            .plate_confidence
            .and_then(|c| c.parse::<f64>().ok())
            .map_or(1.0, |c| c.clamp(0.0, 1.0)),
        observed_at,
        direction: match event.car_move_direction.as_deref() {
            Some("in") => Some(parkflow_protocol::Direction::Entry),
            Some("out") => Some(parkflow_protocol::Direction::Exit),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/anpr")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn each_vendors_documented_event_reads_as_a_plate_read() {
        let cases = [
            (Vendor::Hikvision, "hikvision_anpr.xml", "浙A12345", 0.96),
            (
                Vendor::Dahua,
                "dahua_traffic_junction.json",
                "浙A12345",
                232.0 / 255.0,
            ),
            (Vendor::Axis, "axis_lpv.json", "KLM482", 0.912344),
            (
                Vendor::Platerecognizer,
                "platerecognizer_stream.json",
                "FZ482KD",
                0.904,
            ),
            (
                Vendor::Openalpr,
                "openalpr_alpr_group.json",
                "8KTP493",
                0.947137,
            ),
            (
                Vendor::Openalpr,
                "openalpr_alpr_results.json",
                "8KTP493",
                0.947137,
            ),
        ];
        for (vendor, file, plate, confidence) in cases {
            let read = parse(vendor, "application/octet-stream", &fixture(file))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(read.plate, plate, "{file}");
            assert!(
                (read.confidence - confidence).abs() < 1e-6,
                "{file}: {}",
                read.confidence
            );
            assert!(read.observed_at.is_some(), "{file}: no time");
            assert!(!read.event_id.is_empty(), "{file}");
            let id = event_id(vendor, "cam-1", &read.event_id);
            assert!(parkflow_protocol::EventId::parse(&id).is_ok(), "{id}");
        }
    }

    #[test]
    fn hikvision_inside_multipart_with_pictures() {
        let xml = fixture("hikvision_anpr.xml");
        let mut body = Vec::new();
        body.extend_from_slice(b"--b0undary\r\nContent-Disposition: form-data; name=\"anpr.xml\"; filename=\"anpr.xml\"\r\nContent-Type: text/xml\r\n\r\n");
        body.extend_from_slice(&xml);
        body.extend_from_slice(b"\r\n--b0undary\r\nContent-Disposition: form-data; name=\"licensePlatePicture.jpg\"; filename=\"licensePlatePicture.jpg\"\r\nContent-Type: image/pjpeg\r\n\r\n\xff\xd8\xff\xe0picture\r\n--b0undary--\r\n");
        let read = parse(
            Vendor::Hikvision,
            "multipart/form-data; boundary=b0undary",
            &body,
        )
        .unwrap();
        assert_eq!(read.plate, "浙A12345");
        let kept = pictures("multipart/form-data; boundary=b0undary", &body);
        assert_eq!(
            kept,
            [Picture {
                content_type: "image/jpeg",
                bytes: b"\xff\xd8\xff\xe0picture".to_vec(),
            }]
        );
        assert!(pictures("application/xml", &xml).is_empty());
    }

    #[test]
    fn malformed_and_foreign_events_are_refused() {
        assert!(parse(Vendor::Hikvision, "text/xml", b"<EventNotificationAlert>").is_err());
        assert!(parse(Vendor::Hikvision, "text/xml", b"{}").is_err());
        assert!(parse(Vendor::Platerecognizer, "application/json", b"[1,2]").is_err());
        assert!(
            parse(
                Vendor::Openalpr,
                "application/json",
                br#"{"data_type":"heartbeat"}"#
            )
            .is_err()
        );
        assert!(
            parse(
                Vendor::Hikvision,
                "multipart/form-data; boundary=x",
                b"--x--"
            )
            .is_err()
        );
    }
}
