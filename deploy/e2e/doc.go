// Package e2e runs dmarc-milter behind a real Postfix and checks what an
// SMTP client and the recipient's mailbox see.
//
// Each test builds a throwaway Postfix instance under a temporary directory
// (its own config_directory, queue_directory, data_directory and maillog
// file; `postfix -c DIR start`), so the system's default instance is never
// touched. One smtpd listener per milter variant sits on a free loopback
// port with its own smtpd_milters; mail for lab.test is delivered by
// virtual(8) into a Maildir the test reads. The client uses XCLIENT to claim
// the client address and HELO of each scenario, which is what the milter
// sees at connect.
//
// DNS comes from the in-process test server (internal/dnstest) with the
// records of testdata/e2e/zone.json. Postfix itself does no DNS lookups.
//
// The tests run only as root with Postfix installed, and skip otherwise;
// with DMARC_E2E_REQUIRED=1 (set by `make test` in CI) a missing Postfix is
// a failure. DMARC_MILTER_BIN selects an installed daemon binary instead of
// building ./cmd/dmarc-milter, and DMARC_MILTER_CONFIG a configuration file
// for it (the scenario's flags override the file).
//
// milter_default_action is accept in the test instance, as operators
// usually run it: a milter that is down must then show up as a missing
// Authentication-Results field or a wrong reply, never as the 451 or 550
// a scenario expects.
package e2e
