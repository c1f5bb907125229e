use super::*;
use hickory_proto::op::Query;

fn query_message(name: &str, qtype: RecordType, edns: bool) -> Message {
    let mut message = Message::new();
    message
        .set_id(4242)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(parse_name(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        message.set_edns(e);
    }
    message
}

fn answer(zone: &str, name: &str, qtype: RecordType) -> Message {
    let zone = Zone::parse(zone).unwrap();
    let (_, response) = zone.respond(&query_message(name, qtype, false));
    response.expect("an answer")
}

async fn udp_exchange(server: &TestDnsServer, request: &Message) -> Message {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    socket
        .send_to(&request.to_vec().unwrap(), server.addr)
        .await
        .unwrap();
    let mut buf = vec![0u8; 65_535];
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("answer in time")
        .unwrap();
    Message::from_vec(&buf[..len]).unwrap()
}

async fn tcp_exchange(server: &TestDnsServer, request: &Message) -> Message {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let bytes = request.to_vec().unwrap();
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&bytes).await.unwrap();
    let frame = read_frame(&mut stream).await.unwrap().unwrap();
    Message::from_vec(&frame).unwrap()
}

#[test]
fn tokenizer_handles_quotes_and_comments() {
    assert_eq!(
        tokenize(r#"a.test 60 TXT "x # y" "say \"hi\"" bare # comment"#).unwrap(),
        vec!["a.test", "60", "TXT", "x # y", "say \"hi\"", "bare"]
    );
    assert!(tokenize("  # only a comment").unwrap().is_empty());
    assert!(tokenize(r#"a TXT "open"#).is_err());
}

#[test]
fn parse_rejects_bad_lines() {
    for bad in [
        "a.test",
        "a.test A",
        "a.test A 300.1.1.1",
        "a.test AAAA 192.0.2.1",
        "a.test BOGUS x",
        "a.test A 192.0.2.1 extra",
        "a.test DELAY soon A 192.0.2.1",
        "a.test SERVFAIL NOTATYPE",
        "a.test CNAME b.test\na.test A 192.0.2.1",
        "$NEGATIVE_TTL x",
    ] {
        assert!(Zone::parse(bad).is_err(), "accepted {bad:?}");
    }
    let error = Zone::parse("ok.test A 192.0.2.1\n\nbad.test A nope").unwrap_err();
    assert!(error.contains("line 3"), "{error}");
}

#[test]
fn parse_durations() {
    assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
    assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
    assert!(parse_duration("-1s").is_err());
}

#[test]
fn answers_records_case_insensitively_with_ttls() {
    let response = answer("Host.Test. 42 A 192.0.2.1", "HOST.test", RecordType::A);
    assert_eq!(response.response_code(), ResponseCode::NoError);
    assert!(response.authoritative());
    let [record] = response.answers() else {
        panic!("{response:?}")
    };
    assert_eq!(record.ttl(), 42);
    assert_eq!(record.data(), &RData::A(A::new(192, 0, 2, 1)));
    // The owner is spelled as asked.
    assert_eq!(record.name().to_ascii(), "HOST.test.");
}

#[test]
fn negative_answers_carry_an_soa() {
    let zone = "$NEGATIVE_TTL 7\na.b.test A 192.0.2.1";
    let nx = answer(zone, "nope.test", RecordType::A);
    assert_eq!(nx.response_code(), ResponseCode::NXDomain);
    let [soa] = nx.name_servers() else {
        panic!("{nx:?}")
    };
    assert_eq!(soa.ttl(), 7);
    assert!(matches!(soa.data(), RData::SOA(s) if s.minimum() == 7));

    let nodata = answer(zone, "a.b.test", RecordType::AAAA);
    assert_eq!(nodata.response_code(), ResponseCode::NoError);
    assert!(nodata.answers().is_empty());
    assert_eq!(nodata.name_servers().len(), 1);

    // Empty non-terminal: exists, has no data.
    let ent = answer(zone, "b.test", RecordType::A);
    assert_eq!(ent.response_code(), ResponseCode::NoError);
    assert!(ent.answers().is_empty());
}

#[test]
fn cname_chains_and_wildcards() {
    let zone = "a.test CNAME b.test\nb.test CNAME c.test\nc.test A 192.0.2.3\n\
                dangling.test CNAME missing.test\n*.wild.test 10 A 192.0.2.9";
    let response = answer(zone, "a.test", RecordType::A);
    assert_eq!(response.response_code(), ResponseCode::NoError);
    let types: Vec<_> = response.answers().iter().map(Record::record_type).collect();
    assert_eq!(
        types,
        vec![RecordType::CNAME, RecordType::CNAME, RecordType::A]
    );
    // Asking for the CNAME itself does not follow it.
    assert_eq!(answer(zone, "a.test", RecordType::CNAME).answers().len(), 1);

    let dangling = answer(zone, "dangling.test", RecordType::A);
    assert_eq!(dangling.response_code(), ResponseCode::NXDomain);
    assert_eq!(dangling.answers().len(), 1);

    let wild = answer(zone, "x.y.wild.test", RecordType::A);
    assert_eq!(wild.answers()[0].name().to_ascii(), "x.y.wild.test.");
    assert_eq!(
        answer(zone, "wild.test", RecordType::A).response_code(),
        ResponseCode::NoError // empty non-terminal, not the wildcard
    );
}

#[test]
fn failures_per_name_and_per_type() {
    let zone = "sf.test SERVFAIL\nre.test REFUSED\nhalf.test A 192.0.2.1\n\
                half.test SERVFAIL AAAA\ndrop.test DELAY 50ms DROP\nnx.test NXDOMAIN";
    assert_eq!(
        answer(zone, "sf.test", RecordType::TXT).response_code(),
        ResponseCode::ServFail
    );
    assert_eq!(
        answer(zone, "re.test", RecordType::A).response_code(),
        ResponseCode::Refused
    );
    assert_eq!(answer(zone, "half.test", RecordType::A).answers().len(), 1);
    assert_eq!(
        answer(zone, "half.test", RecordType::AAAA).response_code(),
        ResponseCode::ServFail
    );
    assert_eq!(
        answer(zone, "nx.test", RecordType::A).response_code(),
        ResponseCode::NXDomain
    );
    let parsed = Zone::parse(zone).unwrap();
    let (delay, response) = parsed.respond(&query_message("drop.test", RecordType::A, false));
    assert_eq!(delay, Duration::from_millis(50));
    assert!(response.is_none());
}

#[test]
fn long_txt_is_split_into_character_strings() {
    let long = "x".repeat(600);
    let response = answer(
        &format!("t.test TXT \"{long}\" short"),
        "t.test",
        RecordType::TXT,
    );
    let RData::TXT(txt) = response.answers()[0].data() else {
        panic!()
    };
    let lens: Vec<usize> = txt.txt_data().iter().map(|s| s.len()).collect();
    assert_eq!(lens, vec![255, 255, 90, 5]);
}

#[tokio::test]
async fn serves_udp_and_tcp_and_truncates() {
    let long = "y".repeat(2000);
    let server = TestDnsServer::start(&format!("host.test A 192.0.2.1\nbig.test TXT \"{long}\""))
        .await
        .unwrap();
    assert_eq!(server.addr.ip(), Ipv4Addr::LOCALHOST);

    let udp = udp_exchange(&server, &query_message("host.test", RecordType::A, false)).await;
    assert_eq!(udp.id(), 4242);
    assert_eq!(udp.answers().len(), 1);

    let big = query_message("big.test", RecordType::TXT, true);
    let truncated = udp_exchange(&server, &big).await;
    assert!(truncated.truncated());
    assert!(truncated.answers().is_empty());

    let full = tcp_exchange(&server, &big).await;
    assert!(!full.truncated());
    assert_eq!(full.answers().len(), 1);

    assert_eq!(server.queries(), 3);
    assert_eq!(server.queries_for("BIG.test."), 2);
    assert_eq!(server.in_flight(), 0);
    assert_eq!(server.max_in_flight(), 1);

    server.set_zone("host.test A 192.0.2.2");
    let changed = udp_exchange(&server, &query_message("host.test", RecordType::A, false)).await;
    assert_eq!(changed.answers()[0].data(), &RData::A(A::new(192, 0, 2, 2)));
    assert!(server.try_set_zone("host.test A nope").is_err());

    server.reset_counters();
    assert_eq!(server.queries(), 0);
    assert_eq!(server.queries_for("host.test"), 0);
}

#[tokio::test]
async fn delay_does_not_block_other_queries() {
    let server = TestDnsServer::start("slow.test DELAY 1s A 192.0.2.1\nfast.test A 192.0.2.2")
        .await
        .unwrap();
    let slow_query = query_message("slow.test", RecordType::A, false);
    let slow = udp_exchange(&server, &slow_query);
    let fast = async {
        // Ask once the slow one is being worked on.
        while server.in_flight() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = std::time::Instant::now();
        let fast_query = query_message("fast.test", RecordType::A, false);
        let response = udp_exchange(&server, &fast_query).await;
        (started.elapsed(), response)
    };
    let (slow, (fast_elapsed, fast)) = tokio::join!(slow, fast);
    assert_eq!(slow.answers().len(), 1);
    assert_eq!(fast.answers().len(), 1);
    assert!(
        fast_elapsed < Duration::from_millis(900),
        "{fast_elapsed:?}"
    );
    assert_eq!(server.max_in_flight(), 2);
}

#[test]
fn start_in_thread_serves_sync_callers_and_stops_on_drop() {
    let server = TestDnsServer::start_in_thread("host.test A 192.0.2.1").unwrap();
    let addr = server.addr;
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request = query_message("host.test", RecordType::A, false)
        .to_vec()
        .unwrap();
    socket.send_to(&request, addr).unwrap();
    let mut buf = [0u8; 512];
    let (len, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(Message::from_vec(&buf[..len]).unwrap().answers().len(), 1);
    assert_eq!(server.queries(), 1);
    drop(server);
    // The TCP port is closed once dropped.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[tokio::test]
async fn start_rejects_a_bad_zone() {
    let error = TestDnsServer::start("x.test A 999.1.1.1")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert!(TestDnsServer::start_in_thread("x.test NOPE").is_err());
}
