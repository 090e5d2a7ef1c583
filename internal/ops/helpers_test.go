package ops_test

import "github.com/vmprep/vmprep/pkg/stage"

func stageMessage(subject string, data []byte) stage.Message {
	return stage.Message{Subject: subject, Data: data, Delivery: 1}
}
