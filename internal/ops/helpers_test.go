package ops_test

import "github.com/vmprep/vmprep/internal/stage"

func stageMessage(subject string, data []byte) stage.Message {
	return stage.Message{Subject: subject, Data: data, Delivery: 1}
}
