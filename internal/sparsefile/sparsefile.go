// Package sparsefile finds the data regions of a sparse file, so that a
// reader of a raw disk (the store's sparse digest, a clone's copy) skips its
// holes instead of reading gigabytes of zeros. It is the one implementation
// for internal/store and pkg/clone.
package sparsefile

// Yield receives one [start, end) region that may hold data. An error from
// it ends the walk and is returned as it is.
type Yield func(start, end int64) error
