//! Leases and fencing between daemons sharing one database (each daemon a `PgStore`
//! of its own, as in separate processes).

use std::time::Duration;

use berth_core::ports::{Store, StoreError};
use berth_core::state::State;
use berth_postgres::LeaseOwner;

use crate::{create, join, moved, workspace};

#[tokio::test]
async fn a_lease_moves_only_when_its_owner_expired_and_fences_the_old_owner() {
    let Some((url, a)) = crate::fresh("a_lease_moves_only_when_its_owner_expired").await else {
        return;
    };
    let b = crate::open(&url).await;
    // A short lease for A, renewed by nobody: it expires on the database's clock.
    let ttl = Duration::from_millis(600);
    let ma = join(&a, "daemon-a", "host-1", ttl).await;
    let mb = join(&b, "daemon-b", "host-2", Duration::from_secs(30)).await;
    assert!(mb.epoch > ma.epoch, "every join takes a newer epoch");
    let ws = workspace("leased", "docker");
    create(&a, &ws).await;
    assert!(a.holds(&ws.id) && !b.holds(&ws.id));
    assert_eq!(
        b.lease(&ws.id).await.unwrap().unwrap().owner,
        LeaseOwner::Other {
            daemon_id: "daemon-a".into(),
            url: "http://daemon-a.invalid".into()
        }
    );
    assert!(
        !b.acquire(&ws.id).await.unwrap(),
        "a live lease is never taken"
    );
    // B's writes are refused while A owns it, and change nothing.
    match b.commit(&moved(&ws, State::Starting, b.fence())).await {
        Err(StoreError::Fenced { .. }) => {}
        other => panic!("a non-owner's write must be Fenced, got {other:?}"),
    }
    assert_eq!(a.workspace(&ws.id).await.unwrap().unwrap().version, 1);

    // A stops renewing (frozen); past its lease B takes over.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(matches!(
        b.lease(&ws.id).await.unwrap().unwrap().owner,
        LeaseOwner::Free { movable: true, .. }
    ));
    assert_eq!(b.unowned(10).await.unwrap(), vec![ws.id.clone()]);
    assert!(b.acquire(&ws.id).await.unwrap());
    assert!(b.holds(&ws.id));
    assert!(
        !b.acquire(&ws.id).await.unwrap(),
        "a lease is taken once: exactly one caller adopts"
    );
    // A resumes: its write under the old epoch is refused and writes nothing.
    match a.commit(&moved(&ws, State::Starting, a.fence())).await {
        Err(StoreError::Fenced { epoch, .. }) => assert_eq!(epoch, ma.epoch),
        other => panic!("a fenced owner's write must be refused, got {other:?}"),
    }
    match a
        .delete_workspace(
            &ws.id,
            1,
            &[],
            &crate::event(&ws, None, berth_core::model::Cause::Deleted),
            a.fence(),
        )
        .await
    {
        Err(StoreError::Fenced { .. }) => {}
        other => panic!("a fenced owner's delete must be refused, got {other:?}"),
    }
    let before = a.last_event_seq().await.unwrap();
    // The new owner writes; A's heartbeat tells it what it lost.
    b.commit(&moved(&ws, State::Starting, b.fence()))
        .await
        .unwrap();
    assert_eq!(
        a.last_event_seq().await.unwrap(),
        before + 1,
        "only B's write landed"
    );
    let beat = a.heartbeat().await.unwrap();
    assert!(beat.was_expired);
    assert_eq!(beat.lost, vec![ws.id.clone()]);
    assert!(!a.holds(&ws.id));
    // Once A renewed, B's lease is B's: A cannot take it back.
    assert!(!a.acquire(&ws.id).await.unwrap());
}

#[tokio::test]
async fn a_pinned_workspace_moves_only_within_its_host_and_a_restart_takes_its_leases_back() {
    let Some((url, a)) = crate::fresh("a_pinned_workspace_moves_only_within_its_host").await else {
        return;
    };
    let ttl = Duration::from_millis(400);
    join(&a, "daemon-a", "host-1", ttl).await;
    let tmux = workspace("pinned", "tmux");
    let docker = workspace("roams", "docker");
    create(&a, &tmux).await;
    create(&a, &docker).await;
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;

    let elsewhere = crate::open(&url).await;
    join(&elsewhere, "daemon-b", "host-2", Duration::from_secs(30)).await;
    assert_eq!(
        elsewhere.unowned(10).await.unwrap(),
        vec![docker.id.clone()]
    );
    assert!(
        !elsewhere.acquire(&tmux.id).await.unwrap(),
        "tmux stays on its host"
    );
    assert!(elsewhere.acquire(&docker.id).await.unwrap());

    // daemon-a restarts (a new process, same id): it takes back what is still its own,
    // under a new epoch that fences its former self.
    let again = crate::open(&url).await;
    let m = join(&again, "daemon-a", "host-1", Duration::from_secs(30)).await;
    assert!(again.holds(&tmux.id));
    assert!(!again.holds(&docker.id));
    match a.commit(&moved(&tmux, State::Starting, a.fence())).await {
        Err(StoreError::Fenced { .. }) => {}
        other => panic!("the former incarnation must be fenced, got {other:?}"),
    }
    again
        .commit(&moved(&tmux, State::Starting, again.fence()))
        .await
        .unwrap();
    assert_eq!(again.fence().epoch, m.epoch);
    // The former incarnation's heartbeat learns it was replaced.
    match a.heartbeat().await {
        Err(StoreError::Fenced { .. }) => {}
        other => panic!("a replaced incarnation's heartbeat must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn names_and_idempotency_keys_are_global_across_daemons() {
    let Some((url, a)) = crate::fresh("names_and_idempotency_keys_are_global").await else {
        return;
    };
    let b = crate::open(&url).await;
    join(&a, "daemon-a", "h", Duration::from_secs(30)).await;
    join(&b, "daemon-b", "h", Duration::from_secs(30)).await;
    for round in 0..20 {
        let name = format!("same-{round}");
        let (x, y) = (workspace(&name, "docker"), workspace(&name, "docker"));
        let ex = crate::event(&x, Some(State::Stopped), berth_core::model::Cause::Created);
        let ey = crate::event(&y, Some(State::Stopped), berth_core::model::Cause::Created);
        let (ra, rb) = tokio::join!(a.create_workspace(&x, &ex), b.create_workspace(&y, &ey));
        let taken = [&ra, &rb]
            .iter()
            .filter(|r| matches!(r, Err(StoreError::NameTaken { .. })))
            .count();
        assert_eq!(
            taken, 1,
            "round {round}: exactly one create wins: {ra:?} {rb:?}"
        );
        let key = format!("key-{round}");
        let (ka, kb) = tokio::join!(
            a.claim_idempotency_key(&key, "h", "from-a"),
            b.claim_idempotency_key(&key, "h", "from-b")
        );
        let (ka, kb) = (ka.unwrap(), kb.unwrap());
        assert_eq!(
            usize::from(ka.is_none()) + usize::from(kb.is_none()),
            1,
            "one claim wins"
        );
        let stored = a.idempotency_key(&key).await.unwrap().unwrap();
        assert_eq!(ka.or(kb), Some(stored));
    }
}
