package mailbox

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"github.com/lvwatch/lvwatch/internal/process"
	"golang.org/x/sys/unix"
)

// A host id has no owner in vdsm's format, so an lvwatch host marks the mailboxes it
// writes with who wrote them: an Owner in the reserved slot 63 (bytes 4032..4091, before
// the checksum). vdsm reads only slots 0..62 as messages and writes zeros in slot 63, which
// only the checksum covers, so the mark changes nothing for a vdsm SPM; it starts with
// 0x00, so even a reader taking slot 63 for a message would see an empty slot.
//
// Layout: "\0lvw", a version byte (1), 3 zeros, the machine id (16 bytes), the boot id
// (16), the PID namespace's inode (8, little-endian), the pid (4), the process start
// time in clock ticks since boot (8); zeros up to the checksum.
const (
	ownerOffset  = MessagesPerMbox * MessageSize
	ownerVersion = 1
)

var ownerMagic = [4]byte{0, 'l', 'v', 'w'}

// Owner identifies the process that wrote a mailbox: exactly, on the machine it runs on.
type Owner struct {
	Machine [16]byte // /etc/machine-id
	Boot    [16]byte // /proc/sys/kernel/random/boot_id: differs after every boot
	PIDNS   uint64   // inode of the PID namespace the pid belongs to
	PID     uint32
	Start   uint64 // start time of the process, clock ticks since boot: tells a reused pid apart
}

// Owner returns the owner mark of b, if it has one.
func (b *Mailbox) Owner() (Owner, bool) {
	m := b[ownerOffset:checksumOffset]
	var o Owner
	if [4]byte(m[0:4]) != ownerMagic || m[4] != ownerVersion {
		return o, false
	}
	o.Machine, o.Boot = [16]byte(m[8:24]), [16]byte(m[24:40])
	o.PIDNS = binary.LittleEndian.Uint64(m[40:48])
	o.PID = binary.LittleEndian.Uint32(m[48:52])
	o.Start = binary.LittleEndian.Uint64(m[52:60])
	return o, true
}

// setOwner writes o's mark into slot 63 (before Seal).
func (b *Mailbox) setOwner(o Owner) {
	m := b[ownerOffset:checksumOffset]
	clear(m)
	copy(m[0:4], ownerMagic[:])
	m[4] = ownerVersion
	copy(m[8:24], o.Machine[:])
	copy(m[24:40], o.Boot[:])
	binary.LittleEndian.PutUint64(m[40:48], o.PIDNS)
	binary.LittleEndian.PutUint32(m[48:52], o.PID)
	binary.LittleEndian.PutUint64(m[52:60], o.Start)
}

func (o Owner) String() string {
	return fmt.Sprintf("lvwatch pid %d on machine %s", o.PID, hex.EncodeToString(o.Machine[:4]))
}

// messages counts the non-empty slots of b.
func (b *Mailbox) messages() int {
	n := 0
	for i := range MessagesPerMbox {
		if b[i*MessageSize] != 0 {
			n++
		}
	}
	return n
}

// ErrHostIDInUse is wrapped by OpenHost's error when the host id's mailbox holds
// another writer's messages.
var ErrHostIDInUse = errors.New("host id in use by another writer")

// claim decides whether self, starting as host id, may clear mb, the mailbox it finds.
// It may when no SPM would act on mb (no message, or a checksum that fails) or when
// the messages are void because their writer is gone: an lvwatch process of this boot
// that has exited, or one of an earlier boot of this machine. Messages without a mark
// (vdsm's, or an older lvwatch's), of a live process, or of another machine are
// someone's pending requests: erased, they would never be sent again.
func claim(id int, mb *Mailbox, self Owner, alive func(pid int, start uint64) bool) error {
	n := mb.messages()
	if n == 0 || !mb.Valid() {
		return nil
	}
	var who string
	o, marked := mb.Owner()
	switch {
	case !marked:
		who = "a writer that leaves no lvwatch mark (vdsm, or an lvwatch older than the marks)"
	case o == self:
		return nil
	case o.Boot == self.Boot && o.Boot != [16]byte{}:
		switch {
		case o.PIDNS != self.PIDNS:
			who = o.String() + " in another PID namespace"
		case alive(int(o.PID), o.Start):
			who = o.String() + ", which is running"
		default:
			return nil // that process has exited
		}
	case o.Machine == self.Machine && o.Machine != [16]byte{}:
		return nil // written before this machine rebooted
	default:
		who = o.String() + " (another machine)"
	}
	return fmt.Errorf("host id %d: %w: its mailbox holds %d messages of %s; clearing them would leave that writer waiting forever: give this host an id of its own, or take this one over once that writer has stopped", id, ErrHostIDInUse, n, who)
}

// currentOwner identifies this process. Parts the system does not tell stay zero,
// which claim takes as unknown.
func currentOwner() Owner {
	o := Owner{PID: uint32(os.Getpid())}
	if b, err := os.ReadFile("/etc/machine-id"); err == nil {
		hex.Decode(o.Machine[:], bytes.TrimSpace(b))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		if u, err := ParseUUID(string(bytes.TrimSpace(b))); err == nil {
			o.Boot = u
		}
	}
	var st unix.Stat_t
	if unix.Stat("/proc/self/ns/pid", &st) == nil {
		o.PIDNS = st.Ino
	}
	o.Start, _ = process.StartTime(int(o.PID))
	return o
}
