//! What the log shows an operator: rumqttd logs every device disconnect that its router sees
//! first as `ERROR router-drop error=Recv(Disconnected)` (a simulated camera reconnecting is
//! one), which reads as an outage at 3 a.m. [`QuietDisconnects`] drops exactly that line; every
//! other rumqttd error still shows.

use std::fmt::Debug;

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// The one rumqttd event a normal disconnect produces, left out of the log.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietDisconnects;

#[derive(Default)]
struct Fields {
    message: String,
    error: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "error" => self.error = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S> Filter<S> for QuietDisconnects {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        if event.metadata().target() != "rumqttd::server::broker" {
            return true;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        !(fields.message == "router-drop" && fields.error.contains("Disconnected"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Collects the messages of the events it is shown.
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.message);
        }
    }

    #[test]
    fn a_normal_disconnect_is_not_an_error_line_and_real_errors_still_are() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber =
            tracing_subscriber::registry().with(Seen(seen.clone()).with_filter(QuietDisconnects));
        tracing::subscriber::with_default(subscriber, || {
            // As rumqttd 0.20 logs them (`error = ?e` of its link error).
            let disconnected = "Recv(Disconnected)";
            tracing::error!(target: "rumqttd::server::broker", error = %disconnected, "router-drop");
            tracing::error!(target: "rumqttd::server::broker", error = %"Recv(Full)", "router-drop");
            tracing::error!(target: "rumqttd::server::broker", "Tls accept error");
            tracing::error!(target: "parkflow", error = %disconnected, "router-drop");
        });
        assert_eq!(
            *seen.lock().unwrap(),
            ["router-drop", "Tls accept error", "router-drop"],
            "only rumqttd's disconnect line is left out"
        );
    }
}
