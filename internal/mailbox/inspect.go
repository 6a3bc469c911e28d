package mailbox

import (
	"encoding/hex"
	"fmt"
)

// Snapshot is what an inbox and an outbox hold: the events block and every mailbox
// with something in it, decoded for people (lvwatch mailbox dump).
type Snapshot struct {
	Event     string           `json:"event,omitempty"` // the events block's id, if it holds one
	Mailboxes []MailboxContent `json:"mailboxes"`
}

// MailboxContent is one host's mailbox in the inbox or the outbox.
type MailboxContent struct {
	Box    string `json:"box"` // "inbox" or "outbox"
	HostID int    `json:"host"`
	// Checksum is the stored checksum; ChecksumOK says whether it matches (inbox only:
	// the SPM writes none in the outbox).
	Checksum   uint32        `json:"checksum"`
	ChecksumOK *bool         `json:"checksum_ok,omitempty"`
	Slots      []SlotContent `json:"slots"`
}

// SlotContent is one non-empty slot.
type SlotContent struct {
	Slot      int    `json:"slot"`
	MessageID int    `json:"message_id"`
	Kind      string `json:"kind"`
	Domain    string `json:"domain,omitempty"`
	Volume    string `json:"volume,omitempty"`
	SizeMiB   uint64 `json:"size_mib,omitempty"`
	Error     string `json:"error,omitempty"`
	Raw       string `json:"raw,omitempty"` // hex, for messages that do not decode
}

// ReadAll reads the used area of a volume (all 250 blocks).
func (v *Volume) ReadAll() ([]byte, error) {
	buf := AlignedBuffer(UsedSize)
	return buf, v.ReadAt(buf, 0)
}

// Inspect decodes the used areas of an inbox and an outbox (UsedSize bytes each).
// A mailbox is listed when it has a non-empty slot or, in the inbox, a checksum that
// is not that of an empty mailbox.
func Inspect(inbox, outbox []byte) (Snapshot, error) {
	snap := Snapshot{Mailboxes: []MailboxContent{}}
	if len(inbox) != UsedSize || len(outbox) != UsedSize {
		return snap, fmt.Errorf("inspect: want %d bytes of each volume, got %d and %d", UsedSize, len(inbox), len(outbox))
	}
	if id, ok := DecodeEvent((*Mailbox)(inbox)); ok {
		snap.Event = UUID(id).String()
	}
	for _, box := range []struct {
		name string
		data []byte
	}{{"inbox", inbox}, {"outbox", outbox}} {
		for id := MinHostID; id <= MaxHostID; id++ {
			mb := (*Mailbox)(box.data[blockOffset(id):])
			c := MailboxContent{Box: box.name, HostID: id, Checksum: mb.StoredChecksum()}
			if box.name == "inbox" {
				ok := mb.Valid()
				c.ChecksumOK = &ok
			}
			for slot := range MessagesPerMbox {
				if m := mb.Slot(slot); m.Kind() != KindEmpty {
					c.Slots = append(c.Slots, inspectSlot(id, slot, m))
				}
			}
			if len(c.Slots) > 0 || (c.ChecksumOK != nil && (!*c.ChecksumOK || c.Checksum != 0)) {
				snap.Mailboxes = append(snap.Mailboxes, c)
			}
		}
	}
	return snap, nil
}

func inspectSlot(id, slot int, m Message) SlotContent {
	s := SlotContent{Slot: slot, MessageID: id*SlotsPerMailbox + slot, Kind: m.Kind().String()}
	switch m.Kind() {
	case KindExtend:
		e, err := DecodeExtend(m)
		s.Domain, s.Volume, s.SizeMiB = e.Domain.String(), e.Volume.String(), e.SizeMiB
		if err != nil {
			s.Error, s.Raw = err.Error(), hex.EncodeToString(m[:])
		}
	case KindUnknown:
		s.Raw = hex.EncodeToString(m[:])
	}
	return s
}
