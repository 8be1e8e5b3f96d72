package mqtt

// fixture is one CONNECT (or non-CONNECT) byte sequence, annotated byte by
// byte. Table tests, benchmarks and the fuzz seed corpus all draw on it.
type fixture struct {
	name string
	in   []byte
	want Connect // when err is nil
	err  error
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func s(v string) []byte { return []byte(v) }

var fixtures = []fixture{
	{
		name: "3.1.1 minimal",
		in: cat(
			[]byte{0x10, 13},        // CONNECT, Remaining Length 13
			[]byte{0, 4}, s("MQTT"), // protocol name
			[]byte{4},            // level 4
			[]byte{0x02},         // flags: clean session
			[]byte{0, 60},        // keepalive 60 s
			[]byte{0, 1}, s("a"), // client ID "a"
		),
		want: Connect{Level: Level311, ClientID: "a", CleanStart: true, KeepAlive: 60},
	},
	{
		name: "3.1 MQIsdp",
		in: cat(
			[]byte{0x10, 20},
			[]byte{0, 6}, s("MQIsdp"), // 3.1 protocol name
			[]byte{3},                 // level 3
			[]byte{0x00},              // flags: none
			[]byte{0, 10},             // keepalive 10 s
			[]byte{0, 6}, s("legacy"), // client ID
		),
		want: Connect{Level: Level31, ClientID: "legacy", KeepAlive: 10},
	},
	{
		name: "3.1.1 will, username, password",
		in: cat(
			[]byte{0x10, 38},
			[]byte{0, 4}, s("MQTT"),
			[]byte{4},
			[]byte{0xee},             // user | pass | will retain | will QoS 1 | will | clean
			[]byte{0, 30},            // keepalive 30 s
			[]byte{0, 5}, s("dev-1"), // client ID
			[]byte{0, 3}, s("lwt"), // will topic
			[]byte{0, 3}, s("bye"), // will payload
			[]byte{0, 5}, s("alice"), // username
			[]byte{0, 2}, s("pw"), // password
		),
		want: Connect{Level: Level311, ClientID: "dev-1", Username: "alice", HasUsername: true,
			HasPassword: true, CleanStart: true, KeepAlive: 30, Will: true, WillQoS: 1, WillRetain: true},
	},
	{
		name: "3.1.1 empty client ID",
		in: cat(
			[]byte{0x10, 12},
			[]byte{0, 4}, s("MQTT"),
			[]byte{4},
			[]byte{0x02},
			[]byte{0, 60},
			[]byte{0, 0}, // empty client ID: the broker assigns one
		),
		want: Connect{Level: Level311, CleanStart: true, KeepAlive: 60},
	},
	{
		name: "3.1.1 bridge bit",
		in: cat(
			[]byte{0x10, 17},
			[]byte{0, 4}, s("MQTT"),
			[]byte{0x84},             // level 4 with the bridge bit
			[]byte{0x00},             //
			[]byte{0, 60},            //
			[]byte{0, 5}, s("brdge"), //
		),
		want: Connect{Level: Level311, ClientID: "brdge", KeepAlive: 60, Bridge: true},
	},
	{
		name: "5.0 session expiry and user property",
		in: cat(
			[]byte{0x10, 42},
			[]byte{0, 4}, s("MQTT"),
			[]byte{5},                      // level 5
			[]byte{0xc0},                   // user | pass, Clean Start 0
			[]byte{0, 60},                  //
			[]byte{15},                     // properties length 15
			[]byte{0x11, 0, 0, 0x0e, 0x10}, //   Session Expiry Interval 3600
			[]byte{0x26, 0, 1}, s("k"),     //   User Property key "k"
			[]byte{0, 1}, s("v"), //                 value "v"
			[]byte{0x21, 0, 10},     //   Receive Maximum 10
			[]byte{0, 4}, s("cafe"), // client ID
			[]byte{0, 3}, s("bob"), // username
			[]byte{0, 3, 0x01, 0x02, 0x03}, // password (binary)
		),
		want: Connect{Level: Level5, ClientID: "cafe", Username: "bob", HasUsername: true,
			HasPassword: true, KeepAlive: 60, SessionExpiry: 3600},
	},
	{
		name: "5.0 will properties",
		in: cat(
			[]byte{0x10, 29},
			[]byte{0, 4}, s("MQTT"),
			[]byte{5},
			[]byte{0x06},          // will QoS 0 | will | clean
			[]byte{0, 5},          //
			[]byte{0},             // no properties
			[]byte{0, 2}, s("id"), // client ID
			[]byte{5},                 // will properties length 5
			[]byte{0x18, 0, 0, 0, 30}, //   Will Delay Interval 30
			[]byte{0, 1}, s("t"),      // will topic
			[]byte{0, 3}, s("bye"), // will payload
		),
		want: Connect{Level: Level5, ClientID: "id", CleanStart: true, KeepAlive: 5, Will: true},
	},
	{
		name: "5.0 password without username",
		in: cat(
			[]byte{0x10, 17},
			[]byte{0, 4}, s("MQTT"),
			[]byte{5},
			[]byte{0x40}, // password only: allowed from 5.0 on
			[]byte{0, 0},
			[]byte{0},
			[]byte{0, 1}, s("p"),
			[]byte{0, 1}, s("x"),
		),
		want: Connect{Level: Level5, ClientID: "p", HasPassword: true},
	},
	{
		name: "UTF-8 client ID",
		in: cat(
			[]byte{0x10, 17},
			[]byte{0, 4}, s("MQTT"),
			[]byte{4},
			[]byte{0x02},
			[]byte{0, 60},
			[]byte{0, 5}, s("h\u00e9\u00e9"), // "héé": 5 bytes
		),
		want: Connect{Level: Level311, ClientID: "h\u00e9\u00e9", CleanStart: true, KeepAlive: 60},
	},

	// Refusals.
	{name: "HTTP request", in: s("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), err: ErrNotConnect},
	{name: "PUBLISH first", in: []byte{0x30, 0x02, 0x00, 0x00}, err: ErrNotConnect},
	{name: "CONNACK first", in: []byte{0x20, 0x02, 0x00, 0x00}, err: ErrNotConnect},
	{name: "TLS ClientHello", in: []byte{0x16, 0x03, 0x01, 0x00, 0xa5}, err: ErrFixedHeaderFlags}, // type 1, flags 6
	{name: "fixed header flags", in: []byte{0x12, 0x00}, err: ErrFixedHeaderFlags},
	{name: "varint of 5 bytes", in: []byte{0x10, 0xff, 0xff, 0xff, 0xff, 0x01}, err: ErrBadLength},
	{name: "largest Remaining Length", in: []byte{0x10, 0xff, 0xff, 0xff, 0x7f}, err: ErrTooLarge},
	{name: "just over 64 KiB", in: []byte{0x10, 0xfd, 0xff, 0x03}, err: ErrTooLarge}, // 1+3+65533 bytes: one over 64 KiB
	{
		name: "protocol name length 5",
		in:   cat([]byte{0x10, 13}, []byte{0, 5}, s("MQTTT"), []byte{4, 2, 0, 60, 0, 0}),
		err:  ErrProtocolName,
	},
	{
		name: "protocol name MQTX",
		in:   cat([]byte{0x10, 12}, []byte{0, 4}, s("MQTX"), []byte{4, 2, 0, 60, 0, 0}),
		err:  ErrProtocolName,
	},
	{
		name: "MQTT with level 3",
		in:   cat([]byte{0x10, 12}, []byte{0, 4}, s("MQTT"), []byte{3, 2, 0, 60, 0, 0}),
		err:  ErrProtocolLevel,
	},
	{
		name: "MQIsdp with level 4",
		in:   cat([]byte{0x10, 14}, []byte{0, 6}, s("MQIsdp"), []byte{4, 2, 0, 60, 0, 0}),
		err:  ErrProtocolLevel,
	},
	{
		name: "MQTT with level 6",
		in:   cat([]byte{0x10, 12}, []byte{0, 4}, s("MQTT"), []byte{6, 2, 0, 60, 0, 0}),
		err:  ErrProtocolLevel,
	},
	{
		name: "reserved flag",
		in:   cat([]byte{0x10, 12}, []byte{0, 4}, s("MQTT"), []byte{4, 0x03, 0, 60, 0, 0}),
		err:  ErrReservedFlag,
	},
	{
		name: "will QoS 3",
		in:   cat([]byte{0x10, 12}, []byte{0, 4}, s("MQTT"), []byte{4, 0x1e, 0, 60, 0, 0}),
		err:  ErrWillFlags,
	},
	{
		name: "will retain without will",
		in:   cat([]byte{0x10, 12}, []byte{0, 4}, s("MQTT"), []byte{4, 0x22, 0, 60, 0, 0}),
		err:  ErrWillFlags,
	},
	{
		name: "3.1.1 password without username",
		in:   cat([]byte{0x10, 12}, []byte{0, 4}, s("MQTT"), []byte{4, 0x42, 0, 60, 0, 0}),
		err:  ErrPasswordFlag,
	},
	{
		name: "client ID overruns packet",
		in:   cat([]byte{0x10, 12}, []byte{0, 4}, s("MQTT"), []byte{4, 2, 0, 60}, []byte{0, 9}),
		err:  ErrOverrun,
	},
	{
		name: "packet ends inside variable header",
		in:   cat([]byte{0x10, 8}, []byte{0, 4}, s("MQTT"), []byte{4, 2}),
		err:  ErrOverrun,
	},
	{
		name: "username flag but no username",
		in:   cat([]byte{0x10, 13}, []byte{0, 4}, s("MQTT"), []byte{4, 0x82, 0, 60, 0, 1}, s("a")),
		err:  ErrOverrun,
	},
	{
		name: "trailing bytes",
		in:   cat([]byte{0x10, 15}, []byte{0, 4}, s("MQTT"), []byte{4, 2, 0, 60, 0, 1}, s("a"), []byte{0, 0}),
		err:  ErrTrailingBytes,
	},
	{
		name: "client ID not UTF-8",
		in:   cat([]byte{0x10, 14}, []byte{0, 4}, s("MQTT"), []byte{4, 2, 0, 60, 0, 2, 0xc3, 0x28}),
		err:  ErrBadUTF8,
	},
	{
		name: "client ID with NUL",
		in:   cat([]byte{0x10, 14}, []byte{0, 4}, s("MQTT"), []byte{4, 2, 0, 60, 0, 2, 'a', 0}),
		err:  ErrBadUTF8,
	},
	{
		name: "client ID with surrogate",
		in:   cat([]byte{0x10, 15}, []byte{0, 4}, s("MQTT"), []byte{4, 2, 0, 60, 0, 3, 0xed, 0xa0, 0x80}),
		err:  ErrBadUTF8,
	},
	{
		name: "username not UTF-8",
		in:   cat([]byte{0x10, 17}, []byte{0, 4}, s("MQTT"), []byte{4, 0x82, 0, 60, 0, 1}, s("a"), []byte{0, 2, 0xff, 0xfe}),
		err:  ErrBadUTF8,
	},
	{
		name: "5.0 unknown property",
		in:   cat([]byte{0x10, 16}, []byte{0, 4}, s("MQTT"), []byte{5, 2, 0, 60, 2, 0x7f, 0x00, 0, 1}, s("a")),
		err:  ErrProperty,
	},
	{
		name: "5.0 will-only property in CONNECT",
		in:   cat([]byte{0x10, 16}, []byte{0, 4}, s("MQTT"), []byte{5, 2, 0, 60, 2, 0x01, 0x00, 0, 1}, s("a")),
		err:  ErrProperty,
	},
	{
		name: "5.0 duplicate property",
		in:   cat([]byte{0x10, 21}, []byte{0, 4}, s("MQTT"), []byte{5, 2, 0, 60, 6, 0x21, 0, 1, 0x21, 0, 2, 0, 2}, s("ab")),
		err:  ErrProperty,
	},
	{
		name: "5.0 truncated property value",
		in:   cat([]byte{0x10, 16}, []byte{0, 4}, s("MQTT"), []byte{5, 2, 0, 60, 2, 0x11, 0x00, 0, 1}, s("a")),
		err:  ErrProperty,
	},
	{
		name: "5.0 property block overruns packet",
		in:   cat([]byte{0x10, 13}, []byte{0, 4}, s("MQTT"), []byte{5, 2, 0, 60, 9, 0, 0}),
		err:  ErrOverrun,
	},
}
