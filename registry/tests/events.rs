//! Events against a real etcd: recorded, read a page at a time in time order, by unit and by
//! machine, followed from where a read ended, trimmed to the newest, and kept by a recorder
//! while etcd does not answer.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_registry::{
    Event, EventCursor, EventFilter, EventKind, MachineId, Recorder, Registry, EVENTS_KEPT,
};
use support::*;
use tokio::time::Instant;

/// Event `n` of a test: a second apart from the others, about `unit` on machine `machine`.
fn event(n: u64, unit: &str, machine: u8) -> Event {
    Event {
        time: UNIX_EPOCH + Duration::from_secs(1_700_000_000 + n),
        machine: Some(machine_id(machine)),
        source: Some(machine_id(9)),
        ..Event::new(EventKind::Placed, format!("event {n}")).unit(&name(unit))
    }
}

fn messages(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.message.clone()).collect()
}

fn numbered(ns: impl IntoIterator<Item = u64>) -> Vec<String> {
    ns.into_iter().map(|n| format!("event {n}")).collect()
}

/// 30 events: `a.service` on machine 1 (n % 3 == 0), `b.service` on machine 2, `c.service`
/// on machine 1; recorded out of order in three calls, as several writers would.
async fn thirty(registry: &Registry) -> Vec<Event> {
    let all: Vec<Event> = (0..30)
        .map(|n| match n % 3 {
            0 => event(n, "a.service", 1),
            1 => event(n, "b.service", 2),
            _ => event(n, "c.service", 1),
        })
        .collect();
    registry.record_events(&all[20..]).await.unwrap();
    registry.record_events(&all[..10]).await.unwrap();
    registry.record_events(&all[10..20]).await.unwrap();
    all
}

/// Every page of `filter`'s events, `limit` at a time: the messages of each page.
async fn pages(registry: &Registry, filter: &EventFilter, limit: usize) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut after: Option<EventCursor> = None;
    loop {
        let page = registry
            .events(filter, after.as_ref(), limit)
            .await
            .unwrap();
        pages.push(messages(&page.events));
        if !page.more {
            return pages;
        }
        after = page.last;
        assert!(pages.len() < 100, "paging does not end");
    }
}

fn unit_filter(unit: &str) -> EventFilter {
    EventFilter {
        unit: Some(name(unit)),
        machine: None,
    }
}

fn machine_filter(n: u8) -> EventFilter {
    EventFilter {
        unit: None,
        machine: Some(machine_id(n)),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_read_in_time_order_a_page_at_a_time_and_filtered_by_unit_or_machine() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let all = thirty(&registry).await;
    // Stored as recorded, with their times, units, machines and sources.
    let page = registry
        .events(&EventFilter::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(page.events, all);
    assert!(!page.more);

    // Pages of 10 in time order, each reading its page's keys only.
    let before = registry.keys_read();
    assert_eq!(
        pages(&registry, &EventFilter::default(), 10).await,
        [numbered(0..10), numbered(10..20), numbered(20..30)]
    );
    assert_eq!(registry.keys_read() - before, 30);

    // By unit and by machine, filtered in the registry, in pages too.
    assert_eq!(
        pages(&registry, &unit_filter("b.service"), 4)
            .await
            .concat(),
        numbered((0..30).filter(|n| n % 3 == 1))
    );
    assert_eq!(
        pages(&registry, &unit_filter("a.service"), 4).await,
        [
            numbered([0, 3, 6, 9]),
            numbered([12, 15, 18, 21]),
            numbered([24, 27])
        ]
    );
    assert_eq!(
        pages(&registry, &machine_filter(1), 100).await.concat(),
        numbered((0..30).filter(|n| n % 3 != 1))
    );
    let both = EventFilter {
        unit: Some(name("c.service")),
        machine: Some(machine_id(1)),
    };
    assert_eq!(
        pages(&registry, &both, 100).await.concat(),
        numbered((0..30).filter(|n| n % 3 == 2))
    );
    let nobody = EventFilter {
        unit: Some(name("c.service")),
        machine: Some(machine_id(2)),
    };
    assert_eq!(pages(&registry, &nobody, 100).await, [Vec::<String>::new()]);
    assert!(pages(&registry, &machine_filter(3), 5)
        .await
        .concat()
        .is_empty());

    // The newest ones, oldest first, filtered too.
    let latest = registry
        .latest_events(&EventFilter::default(), 3)
        .await
        .unwrap();
    assert_eq!(messages(&latest.events), numbered(27..30));
    assert!(!latest.more);
    let latest_b = registry
        .latest_events(&unit_filter("b.service"), 2)
        .await
        .unwrap();
    assert_eq!(messages(&latest_b.events), numbered([25, 28]));
    // Its end is the newest event read, whatever the filter: nothing after it yet.
    let after = registry
        .events(&EventFilter::default(), latest_b.last.as_ref(), 10)
        .await
        .unwrap();
    assert!(after.events.is_empty() && !after.more);
}

#[tokio::test(flavor = "multi_thread")]
async fn following_from_where_a_read_ended_gets_each_later_event_once() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    thirty(&registry).await;
    let read = registry
        .latest_events(&unit_filter("a.service"), 1)
        .await
        .unwrap();
    let mut follow = registry
        .follow_events(unit_filter("a.service"), read.revision)
        .await
        .unwrap();
    // Recorded later: another unit's, then two of a.service in one call, then one more.
    registry
        .record_events(&[event(40, "b.service", 2)])
        .await
        .unwrap();
    registry
        .record_events(&[event(41, "a.service", 1), event(42, "a.service", 2)])
        .await
        .unwrap();
    registry
        .record_events(&[event(43, "a.service", 1)])
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(10), follow.next())
            .await
            .expect("followed events in time")
            .unwrap();
        got.extend(next);
    }
    assert_eq!(messages(&got), numbered([41, 42, 43]));
    // Trimming (deletions) is not an event.
    registry.trim_events(1).await.unwrap();
    registry
        .record_events(&[event(44, "a.service", 1)])
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), follow.next())
        .await
        .expect("followed events in time")
        .unwrap();
    assert_eq!(messages(&next), numbered([44]));
}

#[tokio::test(flavor = "multi_thread")]
async fn trimming_keeps_the_newest_events() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    thirty(&registry).await;
    assert_eq!(registry.trim_events(100).await.unwrap(), 0);
    assert_eq!(registry.trim_events(10).await.unwrap(), 20);
    let kept = registry
        .events(&EventFilter::default(), None, 100)
        .await
        .unwrap();
    assert_eq!(messages(&kept.events), numbered(20..30));
    assert_eq!(registry.trim_events(10).await.unwrap(), 0);
    // Only events were removed.
    let keys = etcd.key_space().await.keys;
    assert_eq!(keys.len(), 10);
    assert!(keys.iter().all(|k| k
        .key
        .starts_with(format!("{}events/", etcd.prefix).as_bytes())));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leading_engines_recorder_trims_to_the_bound() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    let over = 25;
    let old: Vec<Event> = (0..(EVENTS_KEPT + over) as u64)
        .map(|n| event(n, "old.service", 1))
        .collect();
    registry.record_events(&old).await.unwrap();
    let recorder = Recorder::start(registry.clone(), machine_id(7));
    let _trimming = recorder.trimming();
    recorder.record(Event::new(EventKind::DeclaredDead, "new").machine(&machine_id(3)));
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let latest = registry
            .latest_events(&EventFilter::default(), 1)
            .await
            .unwrap();
        let total = etcd.key_space().await.keys.len();
        if latest.events.first().map(|e| e.message.as_str()) == Some("new") && total == EVENTS_KEPT
        {
            break;
        }
        assert!(Instant::now() < until, "{total} events kept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The oldest went: the first kept is the one after the excess, and the new one is kept.
    let first = registry
        .events(&EventFilter::default(), None, 1)
        .await
        .unwrap();
    assert_eq!(messages(&first.events), numbered([over as u64 + 1]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorder_keeps_its_events_while_etcd_does_not_answer() {
    let etcd = Etcd::start();
    let registry = fleet_registry::Registry::connect(&fleet_registry::EtcdConfig {
        request_timeout: Duration::from_millis(500),
        ..config(&etcd)
    })
    .await
    .unwrap();
    let me = machine_id(4);
    let recorder = Recorder::start(registry.clone(), me.clone());
    etcd.pause();
    recorder.record(Event::new(EventKind::Fenced, "cannot renew its lease").machine(&me));
    // Several failed writes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.resume();
    recorder.record(Event::new(EventKind::Unfenced, "renewed its lease").machine(&me));
    let until = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let page = registry.events(&machine_filter(4), None, 10).await.unwrap();
        if page.events.len() == 2 {
            break page.events;
        }
        assert!(Instant::now() < until, "{:?}", page.events);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Fenced, EventKind::Unfenced]
    );
    assert!(events.iter().all(|e| e.source.as_ref() == Some(&me)));
    assert!(events[0].time <= events[1].time && events[1].time <= SystemTime::now());
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_events_are_left_out_and_bad_positions_refused() {
    let etcd = Etcd::start();
    let registry = registry(&etcd).await;
    registry
        .record_events(&[event(1, "a.service", 1)])
        .await
        .unwrap();
    // Written by something else: left out of reads, not an error.
    let key = format!(
        "{:017}-{}-{:020}",
        1_700_000_001_500_000u64,
        "f".repeat(32),
        0
    );
    etcd.put_raw(&format!("events/{key}"), b"not an event")
        .await;
    registry
        .record_events(&[event(2, "a.service", 1)])
        .await
        .unwrap();
    let page = registry
        .events(&EventFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(messages(&page.events), numbered([1, 2]));
    // A page of one still moves past it.
    assert_eq!(
        pages(&registry, &EventFilter::default(), 1).await.concat(),
        numbered([1, 2])
    );
    for bad in ["", "abc", "00000000000000001", &key.replace('f', "F")] {
        assert!(EventCursor::parse(bad).is_err(), "{bad:?}");
    }
    let cursor = EventCursor::parse(&key).unwrap();
    let after = registry
        .events(&EventFilter::default(), Some(&cursor), 10)
        .await
        .unwrap();
    assert_eq!(messages(&after.events), numbered([2]));
    // An event without a source is stored under no machine's name.
    let anonymous = Event {
        source: None,
        ..event(3, "a.service", 1)
    };
    registry.record_events(&[anonymous]).await.unwrap();
    let last = registry
        .latest_events(&EventFilter::default(), 1)
        .await
        .unwrap();
    assert_eq!(last.events[0].source, None::<MachineId>);
}
