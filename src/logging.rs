//! What the log shows an operator: rumqttd logs every device disconnect that its router sees
//! first as `ERROR router-drop error=Recv(Disconnected)` (a simulated camera reconnecting is
//! one), which reads as an outage at 3 a.m. [`QuietDisconnects`] drops exactly that line; every
//! other rumqttd error still shows. [`no_broker_spans`] keeps rumqttd's per-packet spans from
//! being made at all.

use std::fmt::Debug;

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata};
use tracing_subscriber::filter::{FilterFn, filter_fn};
use tracing_subscriber::layer::{Context, Filter};

/// A global filter that turns off rumqttd's spans (its events stay). rumqttd opens an
/// `error`-level span for every packet it routes (`publish`, with the topic as `Debug`): enabled at
/// any log level, each one was allocated, registered and its fields formatted, about a tenth of
/// the gateway's CPU while sensors stream in. Its error lines lose only the connection id context.
pub fn no_broker_spans() -> FilterFn<impl Fn(&Metadata<'_>) -> bool + Clone> {
    filter_fn(|metadata: &Metadata<'_>| {
        !(metadata.is_span() && metadata.target().starts_with("rumqttd"))
    })
}

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

    /// Counts the spans it is shown.
    struct Spans(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> Layer<S> for Spans {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0
                .lock()
                .unwrap()
                .push(attrs.metadata().name().to_owned());
        }
    }

    #[test]
    fn broker_spans_are_not_made_and_its_events_still_show() {
        let (spans, events) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
        );
        let subscriber = tracing_subscriber::registry()
            .with(no_broker_spans())
            .with(Spans(spans.clone()))
            .with(Seen(events.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let routed = tracing::error_span!(target: "rumqttd::router::routing", "publish");
            let _entered = routed.enter();
            tracing::error!(target: "rumqttd::router::routing", "cursor jumped");
            let ours = tracing::error_span!(target: "parkflow_gateway::mqtt", "link");
            let _ours = ours.enter();
        });
        assert_eq!(
            *spans.lock().unwrap(),
            ["link"],
            "only the platform's span is made"
        );
        assert_eq!(*events.lock().unwrap(), ["cursor jumped"]);
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
