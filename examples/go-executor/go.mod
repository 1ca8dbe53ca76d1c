module seb.example/go-executor

go 1.19
