module example.invalid/pra-go

go 1.19
