//! The event stream's entry format, written by the relay and by
//! reconciliation alike: `type` (the event type) and `data` (the event's
//! JSON).

/// Queues on `pipe` the XADD of one event to `stream`.
pub fn append(pipe: &mut redis::Pipeline, stream: &str, event_type: &str, json: &str) {
    pipe.cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("type")
        .arg(event_type)
        .arg("data")
        .arg(json)
        .ignore();
}
