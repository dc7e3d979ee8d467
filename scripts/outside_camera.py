#!/usr/bin/env python3
"""Outside gate camera for ParkFlow, written from SPEC §2 ("MQTT protocol v1") and §3 alone.

No ParkFlow source code was read to write this file: it is an independent device implementation
meant to show that the published contract is enough to build a working gate camera.

It connects as the first non-simulated `gate_camera` in a demo devices file, publishes plate reads
(QoS 1, alternating entry/exit of one plate) on `parkflow/v1/lots/{lot}/gates/{gate}/plate`, each
signed as a JWS (HS256, kid = device id, key = UTF-8 bytes of the device secret) unless
`--auth broker`, re-sends a read (same event_id) after 2 s and then after 4 and 8 s until a
`command` answering it arrives (giving up after 30 s), verifies every command it receives and
prints one summary line:

    reads=.. answered=.. unanswered=.. bad_signatures=.. open=.. hold=.. p50_ms=.. p99_ms=.. max_ms=..

Round trip = first publish of a read -> verified command for it received (time.perf_counter).
Exit status: 0 if every read was answered and every command verified, 1 otherwise, 2 on setup errors.

    pip install 'paho-mqtt>=2,<3'
    python3 scripts/outside_camera.py --devices demo-devices.json --port 1883 [--reads 200]
"""
import argparse
import base64
import hashlib
import hmac
import json
import math
import queue
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import paho.mqtt.client as mqtt

RESEND_DELAYS_S = (2, 4, 8)  # then every 8 s
GIVE_UP_S = 30.0


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hs256(signing_input: bytes, key: bytes) -> bytes:
    return hmac.new(key, signing_input, hashlib.sha256).digest()


def jws_sign(payload: bytes, kid: str, key: bytes) -> str:
    """RFC 7515 compact serialization, header {"alg":"HS256","kid":kid}."""
    header = json.dumps({"alg": "HS256", "kid": kid}, separators=(",", ":")).encode()
    signing_input = f"{b64url(header)}.{b64url(payload)}".encode("ascii")
    return f"{signing_input.decode('ascii')}.{b64url(hs256(signing_input, key))}"


def jws_verify(token: str, key: bytes) -> tuple[dict, bytes]:
    """Return (header, payload) of a valid HS256 compact JWS; raise ValueError otherwise."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    header = json.loads(b64url_decode(parts[0]))
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise ValueError(f"alg is not HS256: {header!r}")
    expected = hs256(f"{parts[0]}.{parts[1]}".encode("ascii"), key)
    if not hmac.compare_digest(expected, b64url_decode(parts[2])):
        raise ValueError("bad signature")
    return header, b64url_decode(parts[1])


def now_rfc3339() -> str:
    t = datetime.now(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile; 0 for an empty list."""
    if not sorted_values:
        return 0.0
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def pick_device(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        devices = json.load(f)["devices"]
    for d in devices:
        if d.get("kind") == "gate_camera" and d.get("simulated") is False:
            return d
    sys.exit("outside_camera: no gate_camera with simulated=false in " + path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", required=True, help="demo devices JSON file")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--reads", type=int, default=200)
    ap.add_argument("--plate", default="浙A12345")
    ap.add_argument("--auth", choices=("signed", "broker"), default="signed")
    args = ap.parse_args()

    dev = pick_device(args.devices)
    dev_id, key = dev["id"], dev["secret"].encode("utf-8")
    base = f"parkflow/v1/lots/{dev['lot']}/gates/{dev['gate']}"
    plate_topic, command_topic = base + "/plate", base + "/command"

    inbox: "queue.Queue[tuple[float, bytes]]" = queue.Queue()
    subscribed = threading.Event()
    failure: list[str] = []

    def on_socket_open(client, userdata, sock):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            failure.append(f"CONNACK refused: {reason_code}")
            subscribed.set()
            return
        client.subscribe(command_topic, qos=1)  # again on every reconnect

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        if any(rc.is_failure for rc in reason_codes):
            failure.append(f"SUBACK refused: {reason_codes}")
        subscribed.set()

    def on_message(client, userdata, msg):
        if msg.topic == command_topic:
            inbox.put((time.perf_counter(), msg.payload))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=dev_id,
                         clean_session=True, protocol=mqtt.MQTTv311)
    client.username_pw_set(dev["mqtt_username"], dev["mqtt_password"])
    client.on_socket_open, client.on_connect = on_socket_open, on_connect
    client.on_subscribe, client.on_message = on_subscribe, on_message
    try:
        client.connect(args.host, args.port, keepalive=30)
    except OSError as e:
        print(f"outside_camera: cannot connect to {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    client.loop_start()
    if not subscribed.wait(10) or failure:
        print(f"outside_camera: {failure or 'no CONNACK/SUBACK within 10 s'}", file=sys.stderr)
        client.loop_stop()
        return 2

    sent: set[str] = set()          # every event_id we published
    decisions: dict[str, str] = {}  # event_id -> command_id of the first verified answer
    stats = {"answered": 0, "unanswered": 0, "bad": 0, "open": 0, "hold": 0}
    rtts_ms: list[float] = []

    def verify(raw: bytes) -> dict | None:
        """Return the verified command, or None (counted and logged) if it fails verification."""
        try:
            text = raw.decode("utf-8")
            if args.auth == "broker" and text.lstrip().startswith("{"):
                cmd = json.loads(text)  # broker-ACL mode: plain JSON accepted
            else:
                header, payload = jws_verify(text, key)
                if header.get("kid") != dev_id:
                    raise ValueError(f"kid {header.get('kid')!r} != {dev_id!r}")
                cmd = json.loads(payload)
            if not isinstance(cmd, dict):
                raise ValueError("payload is not a JSON object")
            if cmd.get("topic") != command_topic:
                raise ValueError(f"topic {cmd.get('topic')!r} != {command_topic!r}")
            eid = cmd.get("event_id")
            if eid not in sent:
                raise ValueError(f"event_id {eid!r} is not one of our reads")
            if cmd.get("action") not in ("open", "hold") or not cmd.get("command_id"):
                raise ValueError(f"bad action/command_id: {cmd!r}")
            # SPEC §2: a command lives at most 30 s; a late or replayed one is not carried out.
            issued = datetime.fromisoformat(str(cmd.get("issued_at")))
            expires = datetime.fromisoformat(str(cmd.get("expires_at")))
            if expires - issued > timedelta(seconds=30):
                raise ValueError(f"expires_at more than 30 s after issued_at: {cmd!r}")
            if datetime.now(timezone.utc) > expires:
                raise ValueError(f"expired command, not carried out: {cmd['command_id']}")
            if cmd["action"] == "hold" and not all(cmd.get(k) for k in ("amount_due", "currency", "pay_url")):
                raise ValueError(f"hold without amount_due/currency/pay_url: {cmd!r}")
            if decisions.get(eid, cmd["command_id"]) != cmd["command_id"]:
                raise ValueError(f"second decision for {eid}: {cmd['command_id']} != {decisions[eid]}")
            return cmd
        except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            stats["bad"] += 1
            print(f"outside_camera: command failed verification: {e}", file=sys.stderr)
            return None

    def handle(raw: bytes) -> dict | None:
        cmd = verify(raw)
        if cmd is not None and cmd["event_id"] not in decisions:
            decisions[cmd["event_id"]] = cmd["command_id"]
            return cmd
        return None  # failed, or a repeat of a decision we already have (fine)

    for i in range(args.reads):
        event_id = str(uuid.uuid4())
        read = {"event_id": event_id, "plate": args.plate, "plate_color": "blue", "confidence": 0.97,
                "direction": "entry" if i % 2 == 0 else "exit", "observed_at": now_rfc3339(),
                "topic": plate_topic}
        body = json.dumps(read, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        payload = body if args.auth == "broker" else jws_sign(body, dev_id, key).encode("ascii")
        sent.add(event_id)
        t0 = time.perf_counter()
        client.publish(plate_topic, payload, qos=1)
        resends, next_resend = 0, t0 + RESEND_DELAYS_S[0]
        while True:
            now = time.perf_counter()
            if now - t0 >= GIVE_UP_S:
                stats["unanswered"] += 1
                print(f"outside_camera: read {event_id} unanswered after {GIVE_UP_S:.0f} s", file=sys.stderr)
                break
            if now >= next_resend:  # same bytes, same event_id
                client.publish(plate_topic, payload, qos=1)
                resends += 1
                next_resend += RESEND_DELAYS_S[min(resends, len(RESEND_DELAYS_S) - 1)]
                continue
            try:
                arrived, raw = inbox.get(timeout=min(next_resend, t0 + GIVE_UP_S) - now)
            except queue.Empty:
                continue
            cmd = handle(raw)
            if cmd is not None and cmd["event_id"] == event_id:
                rtts_ms.append((arrived - t0) * 1000)
                stats["answered"] += 1
                stats[cmd["action"]] += 1
                break

    # Let late duplicates (answers to our re-sends) arrive, so they are verified too.
    deadline = time.perf_counter() + 0.5
    while (left := deadline - time.perf_counter()) > 0:
        try:
            handle(inbox.get(timeout=left)[1])
        except queue.Empty:
            break
    client.disconnect()
    client.loop_stop()

    rtts_ms.sort()
    print(f"reads={args.reads} answered={stats['answered']} unanswered={stats['unanswered']} "
          f"bad_signatures={stats['bad']} open={stats['open']} hold={stats['hold']} "
          f"p50_ms={percentile(rtts_ms, 50):.1f} p99_ms={percentile(rtts_ms, 99):.1f} "
          f"max_ms={(rtts_ms[-1] if rtts_ms else 0.0):.1f}")
    return 1 if stats["unanswered"] or stats["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())
