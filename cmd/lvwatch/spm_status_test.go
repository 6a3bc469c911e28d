package main

import (
	"reflect"
	"testing"

	"github.com/lvwatch/lvwatch/internal/mailbox"
	"github.com/lvwatch/lvwatch/internal/spm"
)

// An idle SPM's polls change only I/O counters: the snapshot is not rewritten.
func TestStatusWithoutIO(t *testing.T) {
	st := func(stats mailbox.SPMStats) spm.Status {
		return spm.Status{Mailboxes: []spm.MailboxStatus{{Inbox: "in", Stats: stats}}}
	}
	a := st(mailbox.SPMStats{EventReads: 1, FullScans: 1, HostReads: 1, OutboxReads: 1, Replies: 2})
	b := st(mailbox.SPMStats{EventReads: 900, FullScans: 90, HostReads: 9, OutboxReads: 45, Replies: 2})
	if !reflect.DeepEqual(withoutIO(a), withoutIO(b)) {
		t.Error("polls alone change the snapshot")
	}
	if c := st(mailbox.SPMStats{Replies: 3}); reflect.DeepEqual(withoutIO(a), withoutIO(c)) {
		t.Error("a reply does not change the snapshot")
	}
	if a.Mailboxes[0].Stats.EventReads != 1 {
		t.Error("withoutIO changed its argument")
	}
}
