use super::*;

fn sample() -> State {
    let ws = ConnState {
        key: 3,
        generation: 17,
        peer: "192.0.2.7:40000".parse().unwrap(),
        metered: true,
        readable: false,
        write_shut: false,
        peer_gone: false,
        input: b"\x81\x85half".to_vec(),
        output: b"ame\"}".to_vec(),
        phase: PhaseState::Ws(WsState {
            session: (1, 9),
            last_seen: Rel(-2_000_000_000),
            next_ping: Rel(28_000_000_000),
            partial: Some((1, "héllo wor".as_bytes().to_vec())),
        }),
    };
    let http = ConnState {
        key: 0,
        generation: 20,
        peer: "[2001:db8::1]:443".parse().unwrap(),
        metered: false,
        readable: true,
        write_shut: false,
        peer_gone: false,
        input: b"GET /api/on".to_vec(),
        output: Vec::new(),
        phase: PhaseState::Http { deadline: Rel(9_000_000_000), continue_sent: true },
    };
    let closing = ConnState {
        key: 5,
        write_shut: true,
        peer_gone: true,
        phase: PhaseState::Closing { until: Rel(1) },
        ..http.clone()
    };
    State {
        next_generation: 21,
        conns: vec![ws, http, closing],
        chat: ChatState {
            sessions: SessionsState {
                next_generation: 10,
                sessions: vec![SessionState {
                    key: 1,
                    generation: 9,
                    id_hash: [7; 32],
                    user: "ann".into(),
                    last_active: Rel(-5),
                    saved: Rel(60_000_000_000),
                }],
            },
            room: vec![MemberState { conn: 3, session: (1, 9), bucket: Some((2.5, Rel(-100))), v2: true }],
            history: HistoryState {
                epoch: "e1".into(),
                last_id: 42,
                entries: vec![Message { id: 42, ts: 1_700_000_000_000, author: "ann".into(), text: "hi".into() }],
            },
            messages_in: 4,
            messages_rejected: 1,
            rate_limited: 0,
            broadcasts: 3,
        },
        register_limits: vec![Window { ip: "198.51.100.1".parse().unwrap(), start: Rel(-30), count: 2 }],
        login_limits: vec![],
        http_rate_limited: 6,
        stats: StatsState { accepted: 30, ws_opened: 2, responses: vec![(200, 12), (404, 1)], ..Default::default() },
        cluster: None,
    }
}

fn cluster_sample() -> State {
    let cluster = ClusterState {
        node: "a1b2c3d4e5f60718".into(),
        online: vec!["Bob".into(), "ann".into(), "zoë".into()],
        deferred_logouts: vec![[9; 32], [1; 32]],
    };
    State { cluster: Some(cluster), ..sample() }
}

fn handed() -> Vec<Handed> {
    vec![Handed { fd: 12, ws: true }, Handed { fd: 13, ws: false }, Handed { fd: 14, ws: false }]
}

#[test]
fn a_state_comes_back_as_it_went() {
    let bytes = encode(&sample(), &handed());
    let d = decode(&bytes).unwrap();
    assert_eq!(d.handed, handed());
    assert_eq!(d.state.unwrap(), sample());
}

#[test]
fn a_cluster_node_s_state_comes_back_as_it_went() {
    let d = decode(&encode(&cluster_sample(), &handed())).unwrap();
    assert_eq!(d.state.unwrap(), cluster_sample());
}

/// What a skiff of state format 1 wrote (checksum over bytes, no cluster section)
/// is still read: an upgrade from it keeps every socket.
#[test]
fn a_format_1_state_is_still_read() {
    let mut body = W(Vec::new());
    body.state(&sample());
    assert_eq!(body.0.pop(), Some(0), "format 2 ends with the cluster marker");
    let mut out = W(Vec::new());
    out.0.extend_from_slice(MAGIC);
    out.u32(handed().len() as u32);
    for h in handed() {
        out.i32(h.fd);
        out.u8(u8::from(h.ws));
    }
    let sum = checksum(&out.0);
    out.u64(sum);
    out.u32(1);
    out.u64(body.0.len() as u64);
    out.u64(checksum(&body.0));
    out.0.extend_from_slice(&body.0);
    let d = decode(&out.0).unwrap();
    assert_eq!(d.state.unwrap(), sample());
    // The same bytes under format 2 lack the cluster section, and its checksum differs.
    let at = MAGIC.len() + 4 + 5 * handed().len() + 8;
    out.0[at..at + 4].copy_from_slice(&2u32.to_le_bytes());
    assert!(decode(&out.0).unwrap().state.is_err());
}

#[test]
fn the_word_checksum_sees_every_flipped_bit_of_a_word_and_the_tail() {
    let bytes: Vec<u8> = (0..29u8).collect();
    let sum = checksum_words(&bytes);
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut bad = bytes.clone();
            bad[i] ^= 1 << bit;
            assert_ne!(checksum_words(&bad), sum, "byte {i} bit {bit}");
        }
    }
    assert_ne!(checksum_words(&bytes[..28]), sum, "a shorter body");
}

#[test]
fn an_empty_state_round_trips_too() {
    let d = decode(&encode(&State::default(), &[])).unwrap();
    assert!(d.handed.is_empty());
    assert_eq!(d.state.unwrap(), State::default());
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = encode(&sample(), &handed());
    for cut in 0..bytes.len() {
        match decode(&bytes[..cut]) {
            Err(_) => {}
            Ok(d) => assert!(d.state.is_err(), "cut at {cut} decoded a state"),
        }
    }
}

#[test]
fn every_flipped_byte_is_caught_and_the_sockets_survive_a_bad_state() {
    let bytes = encode(&sample(), &handed());
    let envelope = MAGIC.len() + 4 + 5 * handed().len() + 8;
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        match decode(&bad) {
            Err(_) => assert!(i < envelope, "byte {i} is past the envelope, which should still decode"),
            Ok(d) => {
                assert!(i >= envelope, "a flipped envelope byte {i} went unnoticed");
                assert_eq!(d.handed, handed());
                assert!(d.state.is_err(), "byte {i} flipped, state still accepted");
            }
        }
    }
}

#[test]
fn another_state_version_is_refused_by_number() {
    let mut bytes = encode(&sample(), &handed());
    let at = MAGIC.len() + 4 + 5 * handed().len() + 8;
    bytes[at..at + 4].copy_from_slice(&(STATE_VERSION + 1).to_le_bytes());
    let d = decode(&bytes).unwrap();
    assert_eq!(d.state.unwrap_err(), Error::Version(STATE_VERSION + 1));
    assert_eq!(d.handed.len(), 3);
}

/// A body with a good checksum but nonsense inside (a buggy writer) is refused
/// without allocating what its counts claim.
#[test]
fn a_checksummed_body_with_absurd_counts_is_refused() {
    let mut body = W(Vec::new());
    body.u64(1);
    body.u32(u32::MAX);
    let mut out = W(Vec::new());
    out.0.extend_from_slice(MAGIC);
    out.u32(0);
    let sum = checksum(&out.0);
    out.u64(sum);
    out.u32(STATE_VERSION);
    out.u64(body.0.len() as u64);
    out.u64(checksum_words(&body.0));
    out.0.extend_from_slice(&body.0);
    assert_eq!(decode(&out.0).unwrap().state.unwrap_err(), Error::Truncated);
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let good = encode(&cluster_sample(), &handed());
    for _ in 0..2000 {
        let mut b = good.clone();
        let n = (next() % 8) as usize + 1;
        for _ in 0..n {
            let i = (next() as usize) % b.len();
            b[i] = next() as u8;
        }
        let _ = decode(&b);
        let len = (next() as usize) % 200;
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = decode(&junk);
    }
}

#[test]
fn relative_times_put_moments_back_around_a_new_now() {
    let t0 = std::time::Instant::now();
    let later = t0 + std::time::Duration::from_secs(5);
    let earlier = t0.checked_sub(std::time::Duration::from_millis(1500)).unwrap_or(t0);
    let t1 = t0 + std::time::Duration::from_secs(100);
    assert_eq!(Rel::of(later, t0).at(t1), t1 + std::time::Duration::from_secs(5));
    assert_eq!(Rel::of(earlier, t0).at(t1), t1 - t0.duration_since(earlier));
}
