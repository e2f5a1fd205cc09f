package main

// `config from-opendmarc` reads an opendmarc.conf(5) of OpenDMARC 1.4 and
// writes the equivalent dmarc-milter TOML on stdout, with one line on
// stderr per OpenDMARC key saying what became of it. The conversion keeps
// OpenDMARC's behaviour where OpenDMARC's defaults differ from ours (it
// never rejects unless RejectFailures is set, for instance), so that
// switching changes nothing until the operator decides to.

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/dmarc-milter/dmarc-milter/internal/domain"
)

// odKey is one "Name value" line of opendmarc.conf.
type odKey struct {
	name  string // as OpenDMARC spells it (canonical case)
	value string
	line  int
}

// openDMARCKeys are the parameters OpenDMARC 1.4 accepts (its
// opendmarc-config.h), in canonical case: the file matches them
// case-insensitively.
var openDMARCKeys = []string{
	"AuthservID", "AuthservIDWithJobID", "AutoRestart", "AutoRestartCount",
	"AutoRestartRate", "Background", "BaseDirectory", "ChangeRootDirectory",
	"CopyFailuresTo", "DNSTimeout", "DomainWhitelist", "DomainWhitelistFile",
	"DomainWhitelistSize", "EnableCoredumps", "FailureReports",
	"FailureReportsBcc", "FailureReportsOnNone", "FailureReportsSentBy",
	"HistoryFile", "HoldQuarantinedMessages", "IgnoreAuthenticatedClients",
	"IgnoreHosts", "IgnoreMailFrom", "IgnoreMailTo", "MilterDebug", "PidFile",
	"PublicSuffixList", "RecordAllMessages", "RejectFailures",
	"RejectMultiValueFrom", "RejectString", "ReportCommand", "RequiredHeaders",
	"Socket", "SoftwareHeader", "SPFIgnoreResults", "SPFSelfValidate", "Syslog",
	"SyslogFacility", "TestDNSData", "TrustedAuthservIDs", "UMask", "UserID",
}

// parseOpenDMARC reads opendmarc.conf the way OpenDMARC's config.c does:
// text from '#' on is a comment, then a name, white space and the value
// (trimmed). Unknown names are kept (OpenDMARC refuses to start on them;
// the converter reports them).
func parseOpenDMARC(r io.Reader) ([]odKey, error) {
	var keys []odKey
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = strings.Trim(line, " \t\r")
		name, value := line, ""
		if i := strings.IndexAny(line, " \t"); i >= 0 {
			name, value = line[:i], strings.Trim(line[i:], " \t")
		}
		if name == "" {
			continue
		}
		for _, k := range openDMARCKeys {
			if strings.EqualFold(k, name) {
				name = k
				break
			}
		}
		keys = append(keys, odKey{name: name, value: value, line: n})
	}
	return keys, sc.Err()
}

// odBool reads a Boolean as opendmarc.conf(5) says: only the first byte
// counts.
func odBool(v string) (bool, error) {
	if v != "" {
		switch v[0] {
		case 'T', 't', 'Y', 'y', '1':
			return true, nil
		case 'F', 'f', 'N', 'n', '0':
			return false, nil
		}
	}
	return false, fmt.Errorf("%q is not a Boolean (true/false, yes/no, 1/0)", v)
}

// odList splits a comma-separated OpenDMARC list.
func odList(v string) []string {
	var out []string
	for _, e := range strings.Split(v, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// conversion collects the TOML values and the report.
type conversion struct {
	path   string
	vals   map[string]string // our key ("mode", "local_policy.allow_from") -> TOML value
	from   map[string]string // our key -> where it came from, for a comment
	hints  []string          // commented-out suggestions for [local_policy]
	report []reportLine
	failed bool
}

// reportLine is one line of the report; line 0 sorts last (keys not set).
type reportLine struct {
	line int
	text string
}

func (c *conversion) set(key, value, from string) {
	c.vals[key] = value
	c.from[key] = from
}

func (c *conversion) note(k odKey, format string, args ...any) {
	c.report = append(c.report, reportLine{k.line, fmt.Sprintf("%s:%d: %s: %s", c.path, k.line, k.name, fmt.Sprintf(format, args...))})
}

// noteUnset reports a key absent from the file whose OpenDMARC default
// differs from ours.
func (c *conversion) noteUnset(name, format string, args ...any) {
	c.report = append(c.report, reportLine{0, fmt.Sprintf("%s: %s (not set): %s", c.path, name, fmt.Sprintf(format, args...))})
}

func (c *conversion) fail(k odKey, format string, args ...any) {
	c.failed = true
	c.note(k, "ERROR: "+format, args...)
}

func fromOpenDMARCCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(stderr, "usage: dmarc-milter config from-opendmarc /etc/opendmarc.conf > dmarc-milter.toml")
		return 2
	}
	out, report, err := convertOpenDMARC(args[0])
	for _, l := range report {
		fmt.Fprintln(stderr, l)
	}
	if err != nil {
		// No partial configuration on stdout: redirected to a file it
		// would load and silently run on our defaults where OpenDMARC's
		// settings could not be read (RejectFailures garbled, say).
		fmt.Fprintf(stderr, "dmarc-milter config from-opendmarc: %v; no configuration written\n", err)
		return 1
	}
	stdout.Write(out)
	return 0
}

// convertOpenDMARC returns the TOML and the report. With an error the
// report is still complete, so that the operator sees every problem at once.
func convertOpenDMARC(path string) ([]byte, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	keys, err := parseOpenDMARC(f)
	f.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	c := &conversion{path: path, vals: map[string]string{}, from: map[string]string{}}

	// OpenDMARC keeps the last of repeated keys (config_get finds the most
	// recently loaded first).
	last := map[string]odKey{}
	for _, k := range keys {
		if prev, ok := last[k.name]; ok {
			c.note(prev, "given again on line %d; OpenDMARC uses the last one, so this one is ignored", k.line)
		}
		last[k.name] = k
	}
	get := func(name string) (odKey, bool) { k, ok := last[name]; return k, ok }
	baseDir := filepath.Dir(path)
	if k, ok := get("BaseDirectory"); ok {
		baseDir = k.value
	}

	for _, k := range keys {
		if last[k.name] != k {
			continue
		}
		if k.value == "" {
			c.fail(k, "no value (OpenDMARC refuses this: \"required value missing\")")
			continue
		}
		c.convertKey(k, get, baseDir)
	}
	c.unsetDefaults(get)

	out := c.render()
	err = c.selfCheck()
	if err == nil && c.failed {
		err = fmt.Errorf("%s: some keys could not be converted (ERROR lines above)", path)
	}
	slices.SortStableFunc(c.report, func(a, b reportLine) int {
		if (a.line == 0) != (b.line == 0) {
			return cmp.Compare(b.line, a.line) // line 0 last
		}
		return cmp.Compare(a.line, b.line)
	})
	report := make([]string, len(c.report))
	for i, r := range c.report {
		report[i] = r.text
	}
	return out, report, err
}

// selfCheck loads the converted configuration through the loader and
// validation of serve, so that what we print is known to start. A psl
// file missing on this host is left out of the check: the conversion may
// run elsewhere than the mail host, and config check there names it.
func (c *conversion) selfCheck() error {
	saved := c.vals
	c.vals = maps.Clone(saved)
	if p, ok := c.vals["psl"]; ok {
		if s, err := strconv.Unquote(p); err != nil || !fileExists(s) {
			delete(c.vals, "psl")
		}
	}
	text := c.render()
	c.vals = saved
	tmp, err := os.CreateTemp("", "from-opendmarc-*.toml")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(text)
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return werr
	}
	fs, _ := flagSet(io.Discard)
	if _, err := settingsFrom(fs, tmp.Name()); err != nil {
		msg := strings.ReplaceAll(err.Error(), tmp.Name(), "converted")
		return fmt.Errorf("the converted configuration does not validate: %s", msg)
	}
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func (c *conversion) convertKey(k odKey, get func(string) (odKey, bool), baseDir string) {
	from := fmt.Sprintf("%s %s (line %d)", k.name, k.value, k.line)
	boolean := func() (bool, bool) {
		b, err := odBool(k.value)
		if err != nil {
			c.fail(k, "%v", err)
			return false, false
		}
		return b, true
	}
	switch k.name {
	case "AuthservID":
		if k.value == "HOSTNAME" {
			c.note(k, "nothing to set: our authserv_id defaults to the host name")
			return
		}
		c.set("authserv_id", tomlString(k.value), from)
		c.note(k, "-> authserv_id = %s", tomlString(k.value))

	case "TrustedAuthservIDs":
		own := "HOSTNAME"
		if a, ok := get("AuthservID"); ok {
			own = a.value
		}
		var others []string
		for _, id := range odList(k.value) {
			if id != "HOSTNAME" && !strings.EqualFold(id, own) {
				others = append(others, id)
			}
		}
		if len(others) == 0 {
			c.note(k, "nothing to convert: names only our own authserv-id, and we verify SPF and DKIM ourselves")
			return
		}
		c.hints = append(c.hints,
			"# From "+from+": OpenDMARC took SPF and DKIM results from",
			"# these hosts' Authentication-Results. We verify SPF and DKIM ourselves;",
			"# list a host here only if it verifies ARC and removes forged",
			"# Authentication-Results carrying its id (RFC 8601 §5):",
			"# trusted_arc_authserv_ids = "+tomlList(others))
		c.note(k, "not converted: OpenDMARC trusts SPF/DKIM results in these hosts' Authentication-Results; we always verify SPF and DKIM ourselves. The nearest setting, [local_policy] trusted_arc_authserv_ids (trust their ARC-sealed dmarc=pass), is a different promise: left commented out in the output for you to decide")

	case "Socket":
		if _, _, err := parseListen(k.value); err != nil {
			c.fail(k, "%v", err)
			return
		}
		kind, rest, _ := strings.Cut(k.value, ":")
		switch {
		case kind == "local" || kind == "unix":
			c.unixSocket(k, rest, from)
		case !strings.Contains(rest, "@") && !strings.Contains(rest, ":"):
			c.set("listen", tomlString(k.value), from)
			c.note(k, "-> listen = %s; NOTE: OpenDMARC listened on all interfaces for a port without host, we listen on 127.0.0.1 (write inet:%s@0.0.0.0 for all); %s", tomlString(k.value), rest, samePortNote)
		default:
			c.set("listen", tomlString(k.value), from)
			c.note(k, "-> listen = %s (OpenDMARC's spelling is accepted as is); %s", tomlString(k.value), samePortNote)
		}

	case "UMask":
		mask, err := strconv.ParseUint(k.value, 0, 32)
		if err != nil || mask > 0o777 {
			c.fail(k, "%q is not a file mode mask", k.value)
			return
		}
		s, ok := get("Socket")
		if kind, _, _ := strings.Cut(s.value, ":"); !ok || (kind != "local" && kind != "unix") {
			c.note(k, "nothing to convert: it only set the mode of a unix socket (and of PidFile/HistoryFile), and the socket is not a unix one")
			return
		}
		// A socket needs write permission to connect; execute bits mean
		// nothing on it.
		mode := 0o666 &^ mask
		if mode&0o020 == 0 {
			// Postfix connects through socket_group "postfix".
			c.note(k, "not converted: under it the socket would be %04o, which group postfix could not connect to; socket_mode stays \"0660\"", mode)
			return
		}
		c.set("socket_mode", tomlString(fmt.Sprintf("%04o", mode)), from)
		c.note(k, "-> socket_mode = \"%04o\" (the socket's mode under that umask)", mode)

	case "UserID":
		user, group, _ := strings.Cut(k.value, ":")
		var why string
		s, _ := get("Socket")
		switch kind, _, _ := strings.Cut(s.value, ":"); {
		case kind == "local" || kind == "unix":
			why = `; the socket's group is socket_group = "postfix" (see Socket)`
			if group != "" && group != "postfix" {
				why += fmt.Sprintf(", not %q: our user belongs to group postfix only", group)
			}
		default:
			why = "; an inet socket needs no group"
		}
		c.note(k, "not converted: we run as the user of our systemd unit (dmarc-milter), not %q%s", user, why)

	case "RejectFailures":
		b, ok := boolean()
		if !ok {
			return
		}
		if b {
			c.set("mode", `"enforce"`, from)
			c.note(k, `-> mode = "enforce" (reject, quarantine and 451 on DNS failure as the domain's policy says)`)
			return
		}
		c.set("mode", `"monitor"`, from)
		c.note(k, `-> mode = "monitor" (evaluate and write Authentication-Results, never reject); set "enforce" when ready`)

	case "HoldQuarantinedMessages":
		b, ok := boolean()
		if !ok {
			return
		}
		if b {
			c.set("quarantine", `"hold"`, from)
			c.note(k, `-> quarantine = "hold" (Postfix hold queue)`)
			return
		}
		c.set("quarantine", `"tag"`, from)
		c.note(k, `-> quarantine = "tag" (deliver; we also add quarantine_header for Sieve/Junk filing)`)

	case "RejectMultiValueFrom":
		b, ok := boolean()
		if !ok {
			return
		}
		c.set("reject_multi_domain_from", strconv.FormatBool(b), from)
		if b {
			c.note(k, "-> reject_multi_domain_from = true")
			return
		}
		c.note(k, "-> reject_multi_domain_from = false; NOTE: OpenDMARC let such messages pass unevaluated, we evaluate every domain and apply the strictest result")

	case "RequiredHeaders":
		b, ok := boolean()
		if !ok {
			return
		}
		if b {
			c.set("on_malformed_from", `"reject"`, from)
			c.note(k, `-> on_malformed_from = "reject" (no From or no usable domain in it); RFC 5322 header counts other than From are left to the MTA`)
			return
		}
		c.set("on_malformed_from", `"accept"`, from)
		c.note(k, `-> on_malformed_from = "accept" (with dmarc=permerror)`)

	case "IgnoreAuthenticatedClients":
		b, ok := boolean()
		if !ok {
			return
		}
		c.set("skip_authenticated", strconv.FormatBool(b), from)
		c.note(k, "-> skip_authenticated = %t", b)

	case "IgnoreHosts":
		c.ignoreHosts(k, from, baseDir)

	case "IgnoreMailFrom":
		var doms []string
		for _, d := range odList(k.value) {
			nd, err := domain.Normalize(d)
			if err != nil {
				c.fail(k, "%q is not a domain name", d)
				return
			}
			doms = append(doms, nd)
		}
		c.set("local_policy.allow_from", tomlList(doms), from)
		c.note(k, "-> [local_policy] allow_from = %s; NOTE: OpenDMARC skipped these From domains entirely, we still evaluate and write the header but never act on a failure (override local_policy), and subdomains match too", tomlList(doms))

	case "PublicSuffixList":
		c.set("spec", `"rfc7489"`, from)
		c.set("psl", tomlString(k.value), from)
		c.note(k, `-> spec = "rfc7489", psl = %s (OpenDMARC's RFC 7489 organizational domains); remove both to use RFC 9989's DNS tree walk`, tomlString(k.value))

	case "Syslog":
		b, ok := boolean()
		if !ok {
			return
		}
		if b {
			c.set("log_output", `"syslog"`, from)
			c.note(k, `-> log_output = "syslog" (mail facility)`)
			return
		}
		c.set("log_output", `"stderr"`, from)
		c.note(k, `-> log_output = "stderr" (the journal under systemd); OpenDMARC logged nothing`)

	case "SyslogFacility":
		if strings.EqualFold(k.value, "mail") {
			c.note(k, "nothing to convert: we log to the mail facility")
			return
		}
		c.note(k, "not converted: we always log to the mail facility, not %q", k.value)

	case "DNSTimeout":
		n, err := strconv.ParseInt(k.value, 0, 32)
		switch {
		case err != nil:
			c.fail(k, "%q is not a number of seconds", k.value)
		case n <= 0:
			c.note(k, "not converted: 0 means wait forever; we always bound DNS queries (dns_timeout, message_timeout)")
		case n > 20:
			c.note(k, "not converted: dns_timeout must stay within message_timeout (20s by default); keeping the default")
		default:
			c.set("dns_timeout", tomlString(fmt.Sprintf("%ds", n)), from)
			c.note(k, `-> dns_timeout = "%ds" (per query attempt; message_timeout bounds a whole message)`, n)
		}

	case "PidFile", "Background", "AutoRestart", "AutoRestartCount", "AutoRestartRate", "EnableCoredumps":
		c.note(k, "no equivalent: dmarc-milter runs in the foreground and leaves pid files, restarts and core dumps to systemd (see deploy/)")
	case "BaseDirectory":
		c.note(k, "no equivalent: we never change directory; it was used here only to find a relative IgnoreHosts file")
	case "ChangeRootDirectory":
		c.note(k, "no equivalent: confine the daemon with the systemd unit's sandboxing instead of chroot")
	case "MilterDebug":
		c.note(k, "no equivalent: libmilter debugging; set log_level = \"debug\" for our own detail")
	case "AuthservIDWithJobID":
		c.note(k, "no equivalent: our authserv-id never carries the queue id; the queue id is in each decision's log line")
	case "SoftwareHeader":
		c.note(k, "no equivalent: we add no DMARC-Filter header field; `dmarc-milter version` and the start-up log name the version")
	case "RejectString":
		c.note(k, "no equivalent: our reply is fixed, \"550 5.7.1 Email rejected per DMARC policy for <domain>\" (RFC 9989 §5.3.6 wording)")
	case "SPFIgnoreResults", "SPFSelfValidate":
		c.note(k, "nothing to convert: we always validate SPF ourselves and never take SPF results from the message header")
	case "HistoryFile", "RecordAllMessages", "IgnoreMailTo":
		c.note(k, "no equivalent: we write no history file for opendmarc-importstats; each decision is one structured log line (log_format = \"json\") and counted in the metrics")
	case "FailureReports", "FailureReportsBcc", "FailureReportsOnNone", "FailureReportsSentBy", "ReportCommand":
		if b, err := odBool(k.value); k.name == "FailureReports" && err == nil && !b {
			c.note(k, "nothing to convert: failure reports were off, and we send none")
			return
		}
		c.note(k, "no equivalent: dmarc-milter sends no failure reports (RFC 6591)")
	case "CopyFailuresTo":
		c.note(k, "no equivalent: we add no recipients; file failures with a Sieve rule on dmarc=fail in Authentication-Results or on quarantine_header")
	case "DomainWhitelist", "DomainWhitelistFile", "DomainWhitelistSize":
		c.note(k, "no equivalent: OpenDMARC trusted ARC chains sealed by these domains; we verify ARC chains ourselves and trust the sealed dmarc=pass of named upstream hosts ([local_policy] trusted_arc_authserv_ids, by authserv-id; the seal must come from that name's domain)")
	case "TestDNSData":
		c.note(k, "no equivalent: OpenDMARC's test-only fake DNS data")
	default:
		c.note(k, "not converted: not an OpenDMARC 1.4 key (OpenDMARC would refuse to start: \"unrecognized parameter\")")
	}
}

// samePortNote goes with an inet socket kept as is: OpenDMARC's usual
// port is our default one too.
const samePortNote = "smtpd_milters need not change, but stop OpenDMARC before dmarc-milter starts: only one of them can listen there (deploy/OPERATIONS.md, Switching from OpenDMARC)"

// unixSocket converts a unix Socket. OpenDMARC's directory is not ours:
// the unit may create sockets only in the package's two directories, and
// Postfix connects through group postfix, not opendmarc. So the socket
// moves to the package's path in the same layout (inside Postfix's chroot
// or under /run), and the report says what smtpd_milters becomes.
func (c *conversion) unixSocket(k odKey, path, from string) {
	var listen, milter, entry string
	if rel, ok := strings.CutPrefix(path, "/var/spool/postfix/"); ok {
		listen = "unix:" + chrootSocketDir + "/dmarc-milter.sock"
		entry = "unix:/dmarc-milter/dmarc-milter.sock"
		// A chrooted smtpd names the socket relative to the chroot.
		milter = fmt.Sprintf("in main.cf, replace OpenDMARC's entry in smtpd_milters (unix:/%s, or local:%s) with unix:/dmarc-milter/dmarc-milter.sock (unix:%s/dmarc-milter.sock if smtpd is not chrooted)", rel, rel, chrootSocketDir)
	} else {
		listen = "unix:" + runtimeDir + "/dmarc-milter.sock"
		entry = listen
		milter = fmt.Sprintf("in main.cf, replace OpenDMARC's entry in smtpd_milters (unix:%s, or local:%s) with unix:%s/dmarc-milter.sock; a chrooted smtpd (Debian's default) cannot reach /run: use listen = \"unix:%s/dmarc-milter.sock\" and smtpd_milters = unix:/dmarc-milter/dmarc-milter.sock instead", path, path, runtimeDir, chrootSocketDir)
	}
	from += "; the package's socket in the same layout: smtpd_milters = " + entry
	c.set("listen", tomlString(listen), from)
	c.set("socket_group", `"postfix"`, from)
	c.note(k, `-> listen = %s, socket_group = "postfix": the package's socket in the same layout (the unit can create sockets only in %s and %s, and Postfix connects through group postfix); %s`, tomlString(listen), chrootSocketDir, runtimeDir, milter)
}

// unsetDefaults writes the keys whose OpenDMARC default differs from ours,
// so that switching keeps OpenDMARC's behaviour.
func (c *conversion) unsetDefaults(get func(string) (odKey, bool)) {
	unset := func(name string) bool { _, ok := get(name); return !ok }
	from := func(name string) string { return name + " not set (OpenDMARC's default)" }
	if unset("RejectFailures") {
		c.set("mode", `"monitor"`, from("RejectFailures"))
		c.noteUnset("RejectFailures", `-> mode = "monitor": OpenDMARC's default never rejects; set "enforce" when ready`)
	}
	if unset("IgnoreAuthenticatedClients") {
		c.set("skip_authenticated", "false", from("IgnoreAuthenticatedClients"))
		c.noteUnset("IgnoreAuthenticatedClients", "-> skip_authenticated = false: OpenDMARC's default evaluated SASL-authenticated clients too")
	}
	if unset("RequiredHeaders") {
		c.set("on_malformed_from", `"accept"`, from("RequiredHeaders"))
		c.noteUnset("RequiredHeaders", `-> on_malformed_from = "accept": OpenDMARC's default let a message without a usable From through`)
	}
	if unset("IgnoreHosts") {
		c.set("trusted_networks", `["127.0.0.1/32"]`, from("IgnoreHosts"))
		c.noteUnset("IgnoreHosts", `-> trusted_networks = ["127.0.0.1/32"]: OpenDMARC's default ignores 127.0.0.1 only (ours also covers 127.0.0.0/8 and ::1)`)
	}
	if unset("Socket") {
		c.noteUnset("Socket", "OpenDMARC then took it from the command line (-p, often in /etc/default/opendmarc): set listen by hand; ours defaults to inet:127.0.0.1:8893")
	}
	if unset("AuthservID") {
		c.noteUnset("AuthservID", "OpenDMARC used the MTA's name ($j); ours defaults to the host name: set authserv_id if they differ")
	}
	if unset("PublicSuffixList") {
		c.noteUnset("PublicSuffixList", "OpenDMARC then had no organizational domains (relaxed alignment across subdomains failed); we use RFC 9989's DNS tree walk")
	}
}

// ignoreHosts converts the IgnoreHosts dataset: one entry a line, '#'
// comments, entries an address, a network (CIDR, or an IPv4 netmask), a
// host name, or any of these after '!' to exclude it.
//
// OpenDMARC's dmarcf_checkip tries the client's address from the longest
// prefix to the shortest and stops at the first entry listed, an exclusion
// winning over an entry of the same prefix. trusted_networks has no
// exclusions, so each network is written as itself minus the exclusions
// inside it, as the fewest prefixes that cover exactly the rest: the
// excluded hosts are evaluated, as they were.
func (c *conversion) ignoreHosts(k odKey, from, baseDir string) {
	path := k.value
	if !filepath.IsAbs(path) {
		// OpenDMARC opens it from BaseDirectory (or its working directory);
		// without one we take the directory of the configuration file.
		path = filepath.Join(baseDir, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		c.fail(k, "cannot read the dataset: %v", err)
		return
	}
	type entry struct {
		p     netip.Prefix
		text  string // as written
		where string // file:line
	}
	var kept, excluded []entry
	var skipped []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		e := fields[0]
		where := fmt.Sprintf("%s:%d", k.value, n)
		addr, isExcl := strings.CutPrefix(e, "!")
		if p, ok := odPrefix(addr); ok {
			en := entry{p.Masked(), e, where}
			if isExcl {
				excluded = append(excluded, en)
			} else {
				kept = append(kept, en)
			}
			continue
		}
		if a, _, ok := strings.Cut(addr, "/"); ok {
			if _, err := netip.ParseAddr(strings.Trim(a, "[]")); err == nil {
				skipped = append(skipped, where)
				c.note(k, "%s: %q not converted: not a network (bad prefix length or non-contiguous netmask); list it as CIDR", where, e)
				continue
			}
		}
		if isExcl {
			skipped = append(skipped, where)
			c.note(k, "%s: %q not converted: trusted_networks has no exclusions and takes no host names; if a network listed here holds that host's addresses, exclude them with \"!ADDRESS\" lines", where, e)
			continue
		}
		if strings.EqualFold(e, "localhost") {
			kept = append(kept,
				entry{netip.MustParsePrefix("127.0.0.1/32"), e, where},
				entry{netip.MustParsePrefix("::1/128"), e, where})
			continue
		}
		skipped = append(skipped, where)
		c.note(k, "%s: host name %q not converted: trusted_networks takes addresses and networks; list its addresses, or put it in [local_policy] forwarders (verified by reverse DNS; still evaluated, failures overridden)", where, e)
	}
	if err := sc.Err(); err != nil {
		c.fail(k, "reading the dataset: %v", err)
		return
	}

	var nets []string
	seen := map[string]bool{}
	add := func(p netip.Prefix) {
		if s := p.String(); !seen[s] {
			seen[s] = true
			nets = append(nets, s)
		}
	}
	used := make([]bool, len(excluded))
	for _, en := range kept {
		var inside []netip.Prefix
		var names []string
		for i, x := range excluded {
			// An exclusion around the network is shorter, so the
			// network's own entry is found first and wins.
			if x.p.Bits() >= en.p.Bits() && en.p.Contains(x.p.Addr()) {
				used[i] = true
				inside = append(inside, x.p)
				names = append(names, fmt.Sprintf("%q (%s)", x.text, x.where))
			}
		}
		if len(inside) == 0 {
			add(en.p)
			continue
		}
		rest, ok := prefixDifference(en.p, inside, maxDifference)
		switch {
		case !ok:
			skipped = append(skipped, en.where)
			c.note(k, "%s: WARNING: %q left out, so every host in it is evaluated: it minus %s would take more than %d networks; list the parts you trust by hand", en.where, en.text, strings.Join(names, ", "), maxDifference)
		case len(rest) == 0:
			skipped = append(skipped, en.where)
			c.note(k, "%s: %q left out: %s excludes all of it", en.where, en.text, strings.Join(names, ", "))
		default:
			for _, p := range rest {
				add(p)
			}
			var xs []string
			for _, x := range inside {
				xs = append(xs, x.String())
			}
			// The TOML says it too: 24 networks where the dataset had
			// one would puzzle its next reader.
			from += fmt.Sprintf("; %s minus %s as %d networks", en.p, strings.Join(xs, ", "), len(rest))
			c.note(k, "%s: %q minus %s -> %d networks, from %s to %s (trusted_networks has no exclusions: these cover exactly the rest, so the excluded hosts are evaluated, as OpenDMARC did)", en.where, en.text, strings.Join(names, ", "), len(rest), rest[0], rest[len(rest)-1])
		}
	}
	for i, x := range excluded {
		if !used[i] {
			c.note(k, "%s: %q: nothing to convert: no network listed contains it, so it is evaluated anyway", x.where, x.text)
		}
	}
	c.set("trusted_networks", tomlList(nets), from)
	c.note(k, "-> trusted_networks = %s (%d entries from %s; %d not converted)", tomlList(nets), len(nets), path, len(skipped))
}

// maxDifference bounds the networks written for one IgnoreHosts network
// minus its exclusions. One excluded address costs the difference of the
// prefix lengths (24 for a host of a /8, 80 for one of an IPv6 /48), so
// 128 converts any single exclusion exactly; a dataset excluding host
// after host of a network would otherwise make trusted_networks huge.
const maxDifference = 128

// prefixDifference returns p minus the prefixes in excl as the fewest
// prefixes, in address order: a half of p that no exclusion touches is
// kept whole, one inside an exclusion is dropped, and any other is split
// again. It gives up (false) past limit prefixes.
func prefixDifference(p netip.Prefix, excl []netip.Prefix, limit int) ([]netip.Prefix, bool) {
	var out []netip.Prefix
	var walk func(p netip.Prefix, excl []netip.Prefix) bool
	walk = func(p netip.Prefix, excl []netip.Prefix) bool {
		var touching []netip.Prefix
		for _, x := range excl {
			if !x.Overlaps(p) {
				continue
			}
			if x.Bits() <= p.Bits() {
				return true // all of p is excluded
			}
			touching = append(touching, x)
		}
		if len(touching) == 0 {
			out = append(out, p)
			return len(out) <= limit
		}
		// touching is non-empty only for an exclusion longer than p, so
		// p has a bit left to split on.
		lo := netip.PrefixFrom(p.Addr(), p.Bits()+1)
		b := p.Addr().AsSlice()
		b[p.Bits()/8] |= 0x80 >> (p.Bits() % 8)
		hiAddr, _ := netip.AddrFromSlice(b)
		hi := netip.PrefixFrom(hiAddr, p.Bits()+1)
		return walk(lo, touching) && walk(hi, touching)
	}
	if !walk(p.Masked(), excl) {
		return nil, false
	}
	return out, true
}

// odPrefix reads an IgnoreHosts address or network: a.b.c.d, a.b.c.d/N,
// a.b.c.d/m.m.m.m, an IPv6 address or IPv6/N, bracketed or not.
func odPrefix(e string) (netip.Prefix, bool) {
	addr, bits, hasBits := strings.Cut(strings.Trim(e, "[]"), "/")
	addr = strings.Trim(addr, "[]")
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	if !hasBits {
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	if n, err := strconv.Atoi(bits); err == nil {
		p, err := a.Prefix(n)
		return p, err == nil
	}
	// IPv4 netmask form (dmarcf_checkip tries it): only contiguous masks.
	m, err := netip.ParseAddr(bits)
	if err != nil || !a.Is4() || !m.Is4() {
		return netip.Prefix{}, false
	}
	b := m.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	ones := 0
	for ones < 32 && v&(1<<(31-ones)) != 0 {
		ones++
	}
	if ones < 32 && v<<ones != 0 {
		return netip.Prefix{}, false
	}
	p, err := a.Prefix(ones)
	return p, err == nil
}

// render writes the TOML in the order of the loader's keys, each with the
// OpenDMARC setting it came from.
func (c *conversion) render() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# dmarc-milter configuration converted from %s\n", c.path)
	b.WriteString("# by `dmarc-milter config from-opendmarc`. Keys not set here keep their\n")
	b.WriteString("# defaults; deploy/dmarc-milter.toml documents every key. Check it with\n")
	b.WriteString("# `dmarc-milter config check FILE`.\n")
	var fc fileConfig
	inTable := false
	emitted := 0
	for _, k := range walkKeys(&fc) {
		v, ok := c.vals[k.name]
		if !ok {
			continue
		}
		emitted++
		key := k.name
		if t, sub, isTable := strings.Cut(k.name, "."); isTable {
			if !inTable {
				fmt.Fprintf(&b, "\n[%s]\n", t)
				inTable = true
			}
			key = sub
		}
		fmt.Fprintf(&b, "\n# %s\n%s = %s\n", c.from[k.name], key, v)
	}
	if len(c.hints) > 0 {
		if !inTable {
			b.WriteString("\n[local_policy]\n")
		}
		b.WriteString("\n" + strings.Join(c.hints, "\n") + "\n")
	}
	if emitted != len(c.vals) {
		// A key converted to but unknown to the loader: a bug here, which
		// must not drop a setting silently.
		c.failed = true
		c.report = append(c.report, reportLine{0, fmt.Sprintf("%s: ERROR: internal: %d converted keys not written", c.path, len(c.vals)-emitted)})
	}
	return b.Bytes()
}

// tomlString quotes s as a TOML basic string (TOML has no \x escape, so
// strconv.Quote does not do).
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f || r == utf8.RuneError:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func tomlList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = tomlString(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
