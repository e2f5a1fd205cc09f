// Command dmarc-milter is a milter for Postfix and Sendmail that checks SPF
// and DKIM, evaluates the DMARC policy of the From domain and applies it.
//
//	dmarc-milter [serve] [flags]   run the daemon (the default)
//	dmarc-milter config ...        check a configuration, convert OpenDMARC's
//	dmarc-milter check ...         evaluate a saved message offline
//	dmarc-milter record DOMAIN     explain a domain's DMARC policy
//	dmarc-milter version           print the version
//	dmarc-milter -h                all of this, and the daemon's flags
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"log/syslog"
	"net"
	"os"
	"os/signal"
	"os/user"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dmarc-milter/dmarc-milter/auth/dnsres"
	"github.com/dmarc-milter/dmarc-milter/milter"
	"github.com/dmarc-milter/dmarc-milter/policy"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && isHelp(args[0]) {
		// dmarc-milter -h: the commands first, then the daemon's flags
		// (serve is the default command). serve -h prints only the flags.
		usage(stdout)
		fs, _ := flagSet(stdout)
		fmt.Fprintln(stdout, "\nflags of serve (dmarc-milter [serve] [flags]):")
		fs.PrintDefaults()
		return 0
	}
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(args, stderr)
	case "version":
		fmt.Fprintln(stdout, "dmarc-milter", versionString())
		return 0
	case "config":
		return configCmd(args, stdout, stderr)
	case "check":
		return checkCmd(args, stdout, stderr)
	case "record":
		return recordCmd(args, stdout, stderr)
	case "help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "dmarc-milter: unknown command %q\n", cmd)
	usage(stderr)
	return 2
}

func isHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help"
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  dmarc-milter [serve] [flags]   run the milter (flags: dmarc-milter serve -h)
  dmarc-milter config check FILE validate a configuration file and print the effective settings
  dmarc-milter config from-opendmarc /etc/opendmarc.conf
                                 convert an OpenDMARC configuration to ours
  dmarc-milter check [-ip A -helo H -mail-from S -rcpt R] message.eml
                                 evaluate a saved message as the daemon would, with a trace
  dmarc-milter record example.com
                                 fetch, validate and explain a domain's DMARC policy
  dmarc-milter version           print the version
  dmarc-milter help              this list (also -h, --help)
`)
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

// flagSet declares one flag per config key; only flags given on the
// command line override the file.
func flagSet(stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("dmarc-milter serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: dmarc-milter [serve] [flags]   (the other commands: dmarc-milter -h)")
		fs.PrintDefaults()
	}
	config := fs.String("config", "", "TOML configuration `file` (optional; flags override it)")
	fs.String("listen", "inet:127.0.0.1:8893", "milter socket: inet:HOST:PORT, inet:PORT@HOST, unix:/path or local:/path")
	fs.String("dns", "", "comma-separated resolvers, ADDRESS or ADDRESS:PORT (port 53 if none; default: /etc/resolv.conf)")
	fs.String("authserv-id", "", "authserv-id in Authentication-Results (default: the host name)")
	fs.String("mode", "enforce", "enforce, or monitor (evaluate and write the header, never reject or quarantine)")
	fs.String("quarantine", "tag", "tag (deliver with -quarantine-header) or hold (milter quarantine: Postfix hold queue)")
	fs.String("quarantine-header", "X-DMARC-Quarantine: yes", "header added to quarantined mail in tag mode")
	fs.String("on-temperror", "tempfail", "DMARC temperror (DNS failure): tempfail (451 4.7.5) or accept")
	fs.String("on-error", "accept", "internal error in the milter: accept or tempfail (never reject)")
	fs.String("on-malformed-from", "reject", "no usable From domain: reject (550 5.7.1) or accept (dmarc=permerror)")
	fs.Bool("reject-multi-domain-from", false, "reject a From naming several domains instead of evaluating each")
	fs.String("spec", "rfc9989", "rfc9989 (DNS tree walk, np, psd, t) or rfc7489 (public suffix list)")
	fs.String("psl", "", "public suffix list `file` for -spec rfc7489 (default: bundled)")
	fs.String("trusted-networks", "127.0.0.0/8,::1", "comma-separated networks not evaluated (\"\" for none)")
	fs.Bool("skip-authenticated", true, "do not evaluate SASL-authenticated clients ({auth_authen})")
	fs.Duration("message-timeout", 20*time.Second, "DNS budget per message (SPF, DKIM keys, DMARC)")
	fs.Duration("dns-timeout", 2*time.Second, "timeout of one DNS query attempt")
	fs.Duration("idle-timeout", 10*time.Minute, "close an MTA connection silent for this long")
	fs.Int("max-dkim-signatures", 5, "DKIM signatures verified per message")
	fs.Int("max-header-bytes", 1<<20, "header bytes kept and verified per message (at least 65536)")
	fs.String("log-format", "text", "text or json (on stderr)")
	fs.String("log-level", "info", "debug, info, warn or error")
	fs.String("socket-mode", "0660", "file mode of a unix socket")
	fs.String("socket-group", "", "group of a unix socket (e.g. postfix), so the MTA can connect")
	fs.String("log-output", "stderr", "stderr or syslog (mail facility)")
	fs.String("metrics-listen", "", "HOST:PORT for Prometheus /metrics and /healthz (off when empty)")
	return fs, config
}

// loadSettings merges defaults, the file and the flags given.
func loadSettings(args []string, stderr io.Writer) (Settings, string, error) {
	fs, config := flagSet(stderr)
	if err := fs.Parse(args); err != nil {
		return Settings{}, "", err
	}
	if fs.NArg() > 0 {
		return Settings{}, "", fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	st, err := settingsFrom(fs, *config)
	return st, *config, err
}

// settingsFrom merges defaults, the file named by config and the flags
// set on the parsed fs.
func settingsFrom(fs *flag.FlagSet, config string) (Settings, error) {
	st := defaultSettings()
	if config != "" {
		fc, err := loadFile(config)
		if err != nil {
			return Settings{}, withLine(config, err)
		}
		if err := fc.apply(&st); err != nil {
			return Settings{}, withLine(config, fmt.Errorf("%s: %w", config, err))
		}
	}
	var fc fileConfig
	var ferr error
	fs.Visit(func(f *flag.Flag) {
		v := f.Value.String()
		str := func() *string { return &v }
		list := func() *strList { return &strList{items: []string{v}} }
		b := func() *bool { x := v == "true"; return &x }
		dur := func() *duration {
			d, err := time.ParseDuration(v)
			if err != nil {
				ferr = err
			}
			return &duration{Duration: d}
		}
		switch f.Name {
		case "listen":
			fc.Listen = str()
		case "dns":
			fc.DNS = list()
		case "authserv-id":
			fc.AuthServID = str()
		case "mode":
			fc.Mode = str()
		case "quarantine":
			fc.Quarantine = str()
		case "quarantine-header":
			fc.QuarantineHeader = str()
		case "on-temperror":
			fc.OnTempError = str()
		case "on-error":
			fc.OnError = str()
		case "on-malformed-from":
			fc.OnMalformedFrom = str()
		case "reject-multi-domain-from":
			fc.RejectMultiDomain = b()
		case "spec":
			fc.Spec = str()
		case "psl":
			fc.PSL = str()
		case "trusted-networks":
			fc.TrustedNetworks = list()
		case "skip-authenticated":
			fc.SkipAuthenticated = b()
		case "message-timeout":
			fc.MessageTimeout = dur()
		case "dns-timeout":
			fc.DNSTimeout = dur()
		case "idle-timeout":
			fc.IdleTimeout = dur()
		case "max-dkim-signatures", "max-header-bytes":
			n := 0
			_, ferr = fmt.Sscan(v, &n)
			if f.Name == "max-header-bytes" {
				fc.MaxHeaderBytes = &n
			} else {
				fc.MaxDKIMSignatures = &n
			}
		case "log-format":
			fc.LogFormat = str()
		case "log-level":
			fc.LogLevel = str()
		case "socket-mode":
			fc.SocketMode = str()
		case "socket-group":
			fc.SocketGroup = str()
		case "log-output":
			fc.LogOutput = str()
		case "metrics-listen":
			fc.MetricsListen = str()
		}
	})
	if ferr != nil {
		return Settings{}, ferr
	}
	if err := fc.apply(&st); err != nil {
		// These values came from flags: name them as flags.
		if m := validationKey.FindStringSubmatch(err.Error()); m != nil {
			return Settings{}, fmt.Errorf("%s: %s", strings.ReplaceAll(m[1], "_", "-"), err.Error()[len(m[0]):])
		}
		return Settings{}, err
	}
	if err := st.validate(); err != nil {
		return Settings{}, spellError(err, fs, config)
	}
	return st, nil
}

// validationKey is the setting a validation message starts with, spelled
// as a key or as a flag ("message-timeout: ...", "dns_timeout: ...").
var validationKey = regexp.MustCompile(`^([a-z][a-z_-]*): `)

// spellError names the setting of a validation error the way the operator
// wrote it: as the flag if it was given on the command line (or there is
// no file), else as the file's key, with the file and line in front.
// Validation runs once on the merged settings, so it cannot tell by
// itself where a value came from; milter.Config spells its keys as flags.
func spellError(err error, fs *flag.FlagSet, config string) error {
	msg := err.Error()
	m := validationKey.FindStringSubmatch(msg)
	if m == nil {
		return err
	}
	key := strings.ReplaceAll(m[1], "-", "_")
	flagName := strings.ReplaceAll(key, "_", "-")
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == flagName })
	rest := msg[len(m[0]):]
	if given || config == "" {
		return fmt.Errorf("%s: %s", flagName, rest)
	}
	var fc fileConfig
	for _, k := range walkKeys(&fc) {
		if t, sub, ok := strings.Cut(k.name, "."); ok && sub == key {
			key = t + ": " + sub
			break
		}
	}
	return withLine(config, fmt.Errorf("%s: %s: %s", config, key, rest))
}

// syslogNetwork and syslogAddr are where log_output = "syslog" sends:
// empty for the local syslog (/dev/log); tests point them at a socket of
// their own.
var syslogNetwork, syslogAddr string

// syslogPaths are the sockets log/syslog tries for the local syslog, in
// its order; config check looks for them.
var syslogPaths = []string{"/dev/log", "/var/run/syslog", "/var/run/log"}

const syslogRemedy = `start a syslog daemon (rsyslog) or systemd-journald, which provide /dev/log, or set log_output = "stderr" (under systemd, stderr goes to the journal)`

func localSyslog() bool {
	for _, p := range syslogPaths {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return true
		}
	}
	return false
}

// shortAuthservID says when the authserv-id is not a domain name with a
// dot: a short host name ("vm", the default on many machines) is unlikely
// to be what downstream filters trust, and OpenDMARC used Postfix's $j
// ($myhostname), fully qualified.
func shortAuthservID(id string) bool { return !strings.Contains(id, ".") }

const authservIDHint = "set it to this MX's fully qualified name as downstream filters (Sieve, SpamAssassin, Dovecot) know it, usually Postfix's $myhostname, which OpenDMARC used"

func newLogger(st Settings, w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(st.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	newHandler := func(w io.Writer) slog.Handler {
		if st.LogFormat == "json" {
			return slog.NewJSONHandler(w, opts)
		}
		return slog.NewTextHandler(w, opts)
	}
	if st.LogOutput == "syslog" {
		// The priority given here is only the default; each record is
		// sent at its own severity below.
		sw, err := syslog.Dial(syslogNetwork, syslogAddr, syslog.LOG_MAIL|syslog.LOG_INFO, "dmarc-milter")
		if err != nil {
			// log/syslog says only "Unix syslog delivery error".
			return nil, fmt.Errorf("log_output = \"syslog\": no local syslog accepts messages (%w): %s", err, syslogRemedy)
		}
		// syslog stamps the time itself.
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
		return slog.New(newSyslogHandler(sw, newHandler)), nil
	}
	return slog.New(newHandler(w)), nil
}

// syslogHandler sends each record at the syslog severity of its level, so
// that an error reaches mail.err (and whatever the site routes there)
// rather than mail.info. One inner handler per severity: slog handlers
// write each record in a single Write, which becomes one syslog message.
type syslogHandler struct {
	debug, info, warn, err slog.Handler
}

// syslogSeverity adapts one severity method of a syslog.Writer to the
// io.Writer a slog handler writes to.
type syslogSeverity func(string) error

func (f syslogSeverity) Write(p []byte) (int, error) {
	if err := f(string(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}

func newSyslogHandler(sw *syslog.Writer, newHandler func(io.Writer) slog.Handler) *syslogHandler {
	return &syslogHandler{
		debug: newHandler(syslogSeverity(sw.Debug)),
		info:  newHandler(syslogSeverity(sw.Info)),
		warn:  newHandler(syslogSeverity(sw.Warning)),
		err:   newHandler(syslogSeverity(sw.Err)),
	}
}

// pick maps slog's levels to RFC 5424 severities; levels between the
// named ones go to the one below (slog.LevelWarn-1 is info).
func (h *syslogHandler) pick(l slog.Level) slog.Handler {
	switch {
	case l >= slog.LevelError:
		return h.err
	case l >= slog.LevelWarn:
		return h.warn
	case l >= slog.LevelInfo:
		return h.info
	}
	return h.debug
}

func (h *syslogHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.pick(l).Enabled(ctx, l)
}

func (h *syslogHandler) Handle(ctx context.Context, r slog.Record) error {
	return h.pick(r.Level).Handle(ctx, r)
}

func (h *syslogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &syslogHandler{h.debug.WithAttrs(as), h.info.WithAttrs(as), h.warn.WithAttrs(as), h.err.WithAttrs(as)}
}

func (h *syslogHandler) WithGroup(name string) slog.Handler {
	return &syslogHandler{h.debug.WithGroup(name), h.info.WithGroup(name), h.warn.WithGroup(name), h.err.WithGroup(name)}
}

// buildDeps builds the parts shared by all sessions from the settings.
func buildDeps(st Settings, logger *slog.Logger) (milter.Deps, *dnsres.Resolver, error) {
	servers := st.DNS
	if len(servers) == 0 {
		var err error
		servers, err = dnsres.ServersFromResolvConf("/etc/resolv.conf")
		if err != nil {
			return milter.Deps{}, nil, fmt.Errorf("dns: no -dns given and /etc/resolv.conf unusable: %w", err)
		}
	}
	res, err := dnsres.New(dnsres.Config{Servers: servers, Timeout: st.DNSTimeout})
	if err != nil {
		return milter.Deps{}, nil, fmt.Errorf("dns: %w", err)
	}
	opts := policy.Options{Spec: st.Spec}
	if st.PSL != "" {
		psl, err := policy.LoadPSL(st.PSL)
		if err != nil {
			return milter.Deps{}, nil, fmt.Errorf("psl: %w", err)
		}
		opts.PSL = psl
	}
	return milter.Deps{Resolver: res, Evaluator: policy.NewEvaluator(res, opts), Logger: logger}, res, nil
}

func listen(st Settings) (net.Listener, error) {
	network, addr, err := parseListen(st.Listen)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		// A socket left by a crashed run would make Listen fail; remove
		// it only if it is a socket and nobody answers on it.
		if fi, err := os.Lstat(addr); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if c, err := net.DialTimeout("unix", addr, time.Second); err == nil {
				c.Close()
				return nil, fmt.Errorf("listen: %s is in use by another process", addr)
			}
			os.Remove(addr)
		}
		ln, err := net.Listen("unix", addr)
		if err != nil {
			return nil, err
		}
		if err := os.Chmod(addr, st.SocketMode); err != nil {
			ln.Close()
			return nil, err
		}
		if st.SocketGroup != "" {
			g, err := user.LookupGroup(st.SocketGroup)
			if err != nil {
				ln.Close()
				return nil, fmt.Errorf("socket_group: %w", err)
			}
			gid, _ := strconv.Atoi(g.Gid)
			if err := os.Chown(addr, -1, gid); err != nil {
				ln.Close()
				return nil, fmt.Errorf("socket_group: %w", err)
			}
		}
		return ln, nil
	}
	return net.Listen(network, addr)
}

func serve(args []string, stderr io.Writer) int {
	st, configPath, err := loadSettings(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "dmarc-milter: %v\n", err)
		return 2
	}
	logger, err := newLogger(st, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "dmarc-milter: %v\n", err)
		return 1
	}
	slog.SetDefault(logger)
	// go-milter logs through the standard log package (LIBRARIES.md).
	log.SetFlags(0)
	if shortAuthservID(st.Milter.AuthServID) {
		logger.Warn("authserv_id has no dot: "+authservIDHint, "authserv_id", st.Milter.AuthServID)
	}

	deps, res, err := buildDeps(st, logger)
	if err != nil {
		logger.Error("cannot start", "err", err)
		return 1
	}
	srv, err := milter.NewServer(st.Milter, deps)
	if err != nil {
		logger.Error("cannot start", "err", err)
		return 2
	}
	defer res.Close()
	ln, err := listen(st)
	if err != nil {
		logger.Error("cannot listen", "listen", st.Listen, "err", err)
		return 1
	}
	if st.MetricsListen != "" {
		stop, err := startMetrics(st.MetricsListen, srv, res, logger)
		if err != nil {
			ln.Close()
			logger.Error("cannot serve metrics", "metrics_listen", st.MetricsListen, "err", err)
			return 1
		}
		defer stop()
	}
	logger.Info("dmarc-milter started", "version", versionString(), "listen", ln.Addr().String(),
		"authserv_id", st.Milter.AuthServID, "mode", st.Milter.Mode, "spec", string(st.Spec),
		"quarantine", st.Milter.Quarantine, "on_temperror", st.Milter.OnTempError)

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	rl := &reloader{srv: srv, args: args, configPath: configPath, logger: logger, running: st}

	for {
		select {
		case err := <-serveErr:
			if err != nil {
				logger.Error("milter server stopped", "err", err)
				return 1
			}
			return 0
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				rl.reload()
				continue
			}
			logger.Info("stopping: finishing sessions in flight", "signal", sig.String(), "sessions", srv.ActiveSessions())
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			err := srv.Shutdown(ctx)
			cancel()
			if network, addr, _ := parseListen(st.Listen); network == "unix" {
				os.Remove(addr)
			}
			if err != nil {
				logger.Warn("stopped with sessions cut short", "err", err)
				return 1
			}
			logger.Info("stopped")
			return 0
		}
	}
}

// restartSettings are the settings a reload cannot apply: each is built
// into the socket, the resolver, the evaluator or the logger at start.
// Everything else is Settings.Milter, which a reload swaps in whole.
var restartSettings = []struct {
	name string
	get  func(*Settings) string
}{
	{"listen", func(s *Settings) string { return s.Listen }},
	{"socket_mode", func(s *Settings) string { return fmt.Sprintf("%04o", uint32(s.SocketMode)) }},
	{"socket_group", func(s *Settings) string { return s.SocketGroup }},
	{"dns", func(s *Settings) string { return strings.Join(s.DNS, ",") }},
	{"dns_timeout", func(s *Settings) string { return s.DNSTimeout.String() }},
	{"spec", func(s *Settings) string { return string(s.Spec) }},
	{"psl", func(s *Settings) string { return s.PSL }},
	{"log_format", func(s *Settings) string { return s.LogFormat }},
	{"log_level", func(s *Settings) string { return s.LogLevel }},
	{"log_output", func(s *Settings) string { return s.LogOutput }},
	{"metrics_listen", func(s *Settings) string { return s.MetricsListen }},
}

// reloader applies SIGHUP. running is the configuration in force: the
// restart settings as the daemon started, the rest as last applied. warned
// holds, per restart setting, the value last warned about, so that a
// reload of a file left unchanged does not repeat the warning (the
// "configuration reloaded" line still names what awaits a restart).
type reloader struct {
	srv        *milter.Server
	args       []string
	configPath string
	logger     *slog.Logger
	running    Settings
	warned     map[string]string
}

// reload re-reads the file and flags; a bad file keeps the running
// configuration. A restart setting that differs from the running one is
// reported, not applied.
func (r *reloader) reload() {
	st, _, err := loadSettings(r.args, io.Discard)
	if err != nil {
		r.srv.Metrics().Reloaded(false)
		r.logger.Error("reload failed; keeping the running configuration", "config", r.configPath, "err", err)
		return
	}
	if err := r.srv.SetConfig(st.Milter); err != nil {
		r.srv.Metrics().Reloaded(false)
		r.logger.Error("reload failed; keeping the running configuration", "err", err)
		return
	}
	r.running.Milter = st.Milter
	var pending []string
	warned := map[string]string{}
	for _, rs := range restartSettings {
		cur, next := rs.get(&r.running), rs.get(&st)
		if cur == next {
			continue
		}
		pending = append(pending, rs.name)
		warned[rs.name] = next
		if prev, ok := r.warned[rs.name]; !ok || prev != next {
			r.logger.Warn("reload: setting not applied; it needs a restart", "setting", rs.name, "running", cur, "configured", next)
		}
	}
	r.warned = warned
	r.srv.Metrics().Reloaded(true)
	attrs := []any{"config", r.configPath}
	if len(pending) > 0 {
		attrs = append(attrs, "restart_pending", strings.Join(pending, ","))
	}
	r.logger.Info("configuration reloaded", attrs...)
}
