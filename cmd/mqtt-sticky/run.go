package main

import (
	"errors"
	"io"
)

func runAll(args []string, stdout, stderr io.Writer) error {
	return errors.New("not implemented yet")
}
