package main

import (
	"io"
	"log/syslog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSyslogSeverity logs at each level through log_output = "syslog" to
// a unix datagram socket standing in for /dev/log, and reads the <PRI> of
// each message: facility mail, severity from the record's level.
func TestSyslogSeverity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Skipf("no unix datagram sockets here: %v", err)
	}
	defer conn.Close()
	syslogNetwork, syslogAddr = "unixgram", path
	t.Cleanup(func() { syslogNetwork, syslogAddr = "", "" })

	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			st := defaultSettings()
			st.LogOutput, st.LogFormat, st.LogLevel = "syslog", format, "debug"
			logger, err := newLogger(st, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			logger = logger.With("k", "v")
			logger.Debug("at debug")
			logger.Info("at info")
			logger.Warn("at warn")
			logger.Error("at error")
			attr := "k=v"
			if format == "json" {
				attr = `"k":"v"`
			}
			const mail = int(syslog.LOG_MAIL)
			for _, want := range []struct {
				msg string
				pri int
			}{
				{"at debug", mail | int(syslog.LOG_DEBUG)},
				{"at info", mail | int(syslog.LOG_INFO)},
				{"at warn", mail | int(syslog.LOG_WARNING)},
				{"at error", mail | int(syslog.LOG_ERR)},
			} {
				buf := make([]byte, 4096)
				conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := conn.Read(buf)
				if err != nil {
					t.Fatalf("%s: %v", want.msg, err)
				}
				got := string(buf[:n])
				pri := "<" + strconv.Itoa(want.pri) + ">"
				if !strings.HasPrefix(got, pri) || !strings.Contains(got, want.msg) || !strings.Contains(got, "dmarc-milter") || !strings.Contains(got, attr) {
					t.Errorf("%s: got %q, want priority %s", want.msg, got, pri)
				}
				// syslog stamps the time; ours would be a second one.
				if strings.Contains(got, "time=") || strings.Contains(got, `"time"`) {
					t.Errorf("%s: record carries its own time: %q", want.msg, got)
				}
			}
		})
	}
}

// TestSyslogUnavailable: without a syslog socket the daemon cannot start,
// and the error says what to do instead of only log/syslog's "Unix syslog
// delivery error".
func TestSyslogUnavailable(t *testing.T) {
	syslogNetwork, syslogAddr = "unixgram", filepath.Join(t.TempDir(), "no-log")
	t.Cleanup(func() { syslogNetwork, syslogAddr = "", "" })
	st := defaultSettings()
	st.LogOutput = "syslog"
	_, err := newLogger(st, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `set log_output = "stderr"`) || !strings.Contains(err.Error(), "/dev/log") {
		t.Errorf("err %v", err)
	}
}
