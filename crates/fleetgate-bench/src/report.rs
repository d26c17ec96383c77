//! One JSON object per line, fields in the order DESIGN.md gives them.

use serde_json::Value;

fn number(v: f64, decimals: i32) -> Value {
    let scale = 10f64.powi(decimals);
    let rounded = (v * scale).round() / scale;
    if decimals == 0 && rounded.abs() < 9.0e15 {
        Value::from(rounded as i64)
    } else {
        Value::from(rounded)
    }
}

fn line(name: &str, value: Value, unit: &str, peer: Value, peer_value: Value, ratio: Value) {
    println!(
        "{{\"name\": {}, \"value\": {}, \"unit\": {}, \"peer\": {}, \"peer_value\": {}, \"ratio\": {}}}",
        Value::from(name),
        value,
        Value::from(unit),
        peer,
        peer_value,
        ratio
    );
}

/// A throughput with a peer measured in the same run: ratio = ours / peer's.
pub fn ratio(name: &str, ours: f64, unit: &str, peer: &str, peer_value: f64) {
    line(
        name,
        number(ours, 0),
        unit,
        Value::from(peer),
        number(peer_value, 0),
        number(ours / peer_value, 3),
    );
}

/// A figure without a peer.
pub fn alone(name: &str, value: f64, unit: &str) {
    line(name, number(value, 1), unit, Value::Null, Value::Null, Value::Null);
}

/// A latency (or other figure where three decimals matter) without a peer.
pub fn latency(name: &str, value: f64, unit: &str) {
    line(name, number(value, 3), unit, Value::Null, Value::Null, Value::Null);
}
