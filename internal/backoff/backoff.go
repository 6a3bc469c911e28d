// Package backoff paces retries after failures: a wait that doubles from a minimum
// up to a maximum while the failures last, and starts again after a success.
package backoff

import "time"

// Backoff is the wait before the next try. The zero value waits 0; use New.
type Backoff struct {
	min, max, cur time.Duration
}

// New returns a Backoff whose first wait is min and whose waits never pass max.
func New(min, max time.Duration) Backoff { return Backoff{min: min, max: max} }

// Next returns how long to wait before the next try, after one more failure.
func (b *Backoff) Next() time.Duration {
	b.cur = min(max(2*b.cur, b.min), b.max)
	return b.cur
}

// Current is the last wait Next returned (0 after Reset).
func (b *Backoff) Current() time.Duration { return b.cur }

// Reset starts again from min: the try worked.
func (b *Backoff) Reset() { b.cur = 0 }
