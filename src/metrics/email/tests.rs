use super::*;

const MIN: i64 = 60_000;

/// The customer number of a test customer.
fn id(name: &str) -> CustomerId {
    let names = ["c", "quiet", "never-clicks", "later"];
    let i = names
        .iter()
        .position(|n| *n == name)
        .expect("a test customer");
    CustomerId::from_index(i as u32)
}

/// Applies `e` as the task would: clicks carry their customer's number.
fn on(st: &mut EmailState, e: EmailEvent) {
    let c = id(&e.customer_id);
    st.on_event(&e, Some(c));
}

fn ev(kind: EmailEventType, t: Millis, msg: &str, campaign: &str) -> EmailEvent {
    EmailEvent {
        event_id: format!("{msg}-{t}"),
        event_time: t,
        customer_id: "c".into(),
        campaign_id: campaign.into(),
        message_id: msg.into(),
        kind,
        url: None,
    }
}

fn counts(st: &EmailState, start: Millis, end: Millis) -> EmailCounts {
    let (mut all, mut by) = (EmailCounts::default(), HashMap::new());
    st.collect(0, start, end, &mut all, &mut by);
    all
}

fn state() -> EmailState {
    EmailState::new(
        &[WindowSpec::with_default_buckets("10m", 10 * MIN)],
        60 * MIN,
        30 * MIN,
        1_000,
    )
}

#[test]
fn an_earlier_open_arriving_later_moves_the_first_open() {
    let mut st = state();
    on(&mut st, ev(EmailEventType::Opened, 11 * MIN, "m", "a"));
    on(&mut st, ev(EmailEventType::Opened, 12 * MIN, "m", "a"));
    assert_eq!(counts(&st, 10 * MIN, 20 * MIN).unique_opens, 1);
    on(&mut st, ev(EmailEventType::Opened, 9 * MIN, "m", "a"));
    assert_eq!(counts(&st, 10 * MIN, 20 * MIN).unique_opens, 0);
    assert_eq!(counts(&st, 0, 10 * MIN).unique_opens, 1);
}

/// SPEC §3: the rates follow the send cohort, so an open arriving after its
/// delivery's window was published raises that window's rate, not the rate of
/// the window that holds the open.
#[test]
fn a_late_open_raises_the_rate_of_the_window_holding_its_delivery() {
    let mut st = state();
    on(&mut st, ev(EmailEventType::Sent, 4 * MIN, "m", "a"));
    on(&mut st, ev(EmailEventType::Delivered, 5 * MIN, "m", "a"));
    let first = counts(&st, 0, 10 * MIN);
    assert_eq!((first.delivered, first.delivered_opened), (1, 0));
    on(&mut st, ev(EmailEventType::Opened, 15 * MIN, "m", "a"));
    let first = counts(&st, 0, 10 * MIN);
    assert_eq!((first.delivered, first.delivered_opened), (1, 1));
    assert_eq!(first.unique_opens, 0, "the open itself counts at 15m");
    let second = counts(&st, 10 * MIN, 20 * MIN);
    assert_eq!((second.unique_opens, second.delivered_opened), (1, 0));
    assert_eq!(second.delivered, 0);
}

#[test]
fn a_message_counts_again_a_ttl_after_its_first_open() {
    let mut st = state();
    for t in [0, 59 * MIN, 60 * MIN, 61 * MIN, 125 * MIN] {
        on(&mut st, ev(EmailEventType::Opened, t, "m", "a"));
    }
    // Chain: 0, then 60m (>= 0 + ttl), then 125m (>= 60m + ttl).
    assert_eq!(counts(&st, 0, 200 * MIN).unique_opens, 3);
}

#[test]
fn orders_go_to_the_campaign_of_the_last_click_within_the_window() {
    let mut st = state();
    on(&mut st, ev(EmailEventType::Clicked, 0, "m1", "a"));
    st.on_order(id("c"), 29 * MIN); // 29 min after the click on "a"
    st.on_order(id("c"), 30 * MIN); // exactly the window: not attributed
    let (mut all, mut by) = (EmailCounts::default(), HashMap::new());
    st.collect(0, 0, 60 * MIN, &mut all, &mut by);
    assert_eq!(all.attributed_orders, 1);
    assert_eq!(by[&Arc::from("a")].attributed_orders, 1);
    // A click on "b" at 10m arrives late: the 29m order moves to "b", the 30m one joins it.
    on(&mut st, ev(EmailEventType::Clicked, 10 * MIN, "m2", "b"));
    let (mut all, mut by) = (EmailCounts::default(), HashMap::new());
    st.collect(0, 0, 60 * MIN, &mut all, &mut by);
    assert_eq!(all.attributed_orders, 2);
    assert_eq!(by[&Arc::from("a")].attributed_orders, 0);
    assert_eq!(by[&Arc::from("b")].attributed_orders, 2);
    assert_eq!(all.unique_clicks, 2);
}

#[test]
fn an_order_no_click_can_precede_any_more_is_forgotten_at_once() {
    let mut st = state();
    st.on_order(id("quiet"), 5 * MIN);
    st.on_order(id("quiet"), 7 * MIN);
    on(&mut st, ev(EmailEventType::Clicked, 6 * MIN, "m", "a"));
    // The lower bound passes the first order: it is final, the rest is kept.
    st.forget_before(6 * MIN);
    assert_eq!(
        st.customers.get(&id("quiet")).map(|a| a.orders.len()),
        Some(1)
    );
    // A late click at the lower bound still re-attributes the order after it.
    let mut late = ev(EmailEventType::Clicked, 6 * MIN, "m2", "b");
    late.customer_id = "quiet".into();
    on(&mut st, late);
    let (mut all, mut by) = (EmailCounts::default(), HashMap::new());
    st.collect(0, 0, 60 * MIN, &mut all, &mut by);
    assert_eq!(by[&Arc::from("b")].attributed_orders, 1);
    // Past both orders: the customer who clicked keeps the clicks (the attribution
    // window is not over), the one who never clicked is dropped, well before the
    // periodic sweep (a quarter of the attribution window) is due.
    st.on_order(id("never-clicks"), 8 * MIN);
    st.forget_before(9 * MIN);
    assert!(st.customers.get(&id("never-clicks")).is_none());
    assert_eq!(
        st.customers.get(&id("quiet")).map(|a| a.orders.len()),
        Some(0)
    );
    assert_eq!(st.customers.get(&id("c")).map(|a| a.clicks.len()), Some(1));
    assert!(st.pending.is_empty());
    // Restored, the queue is rebuilt from the kept orders.
    st.on_order(id("later"), 20 * MIN);
    let bytes = crate::checkpoint::delta::in_form(crate::checkpoint::delta::Form::Base, || {
        postcard::to_stdvec(&st)
    })
    .expect("encodes");
    let mut back: EmailState =
        crate::checkpoint::delta::in_form(crate::checkpoint::delta::Form::Base, || {
            postcard::from_bytes(&bytes)
        })
        .expect("decodes");
    back.restored();
    let queued = |st: &EmailState| {
        let mut v: Vec<(Millis, CustomerId)> = st.pending.iter().copied().collect();
        v.sort();
        v
    };
    assert_eq!(queued(&back), queued(&st));
    assert_eq!(queued(&st), vec![(20 * MIN, id("later"))]);
}
